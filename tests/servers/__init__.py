"""Real servers the tests start on loopback (PostgreSQL, the S3-compatible moto server)."""
