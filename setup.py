"""sglang-mint: LoRA adapters as the unit of deployment, as an SGLang plugin."""

from setuptools import find_packages, setup

core_packages = find_packages(include=["sglang_mint", "sglang_mint.*"])

setup(
    name="sglang-mint",
    version="0.1.0",
    description=(
        "SGLang plugin: a catalog of up to a million LoRA adapters served by id, "
        "cold-loaded in the background, with packed adapter files and Triton kernels"
    ),
    python_requires=">=3.10",
    packages=core_packages + ["sglang_mint.kernels", "sglang_mint.kernels.configs"],
    # The top-level kernels/ folder installs as sglang_mint.kernels: a top-level
    # package named `kernels` would shadow the `kernels` package sglang depends on.
    # configs/kernels/ (the block-size tables) installs beside it as
    # sglang_mint/kernels/configs/, where kernels/_config.py looks first.
    package_dir={"sglang_mint.kernels": "kernels", "sglang_mint.kernels.configs": "configs/kernels"},
    package_data={"sglang_mint": ["configs/*.json", "gateway/adapter_route/*"], "sglang_mint.kernels.configs": ["*.json"]},
    install_requires=[
        "sglang==0.5.23",
        "safetensors",
        "numpy",
        "regex",  # stop patterns matched in bounded time (sglang_mint/stop_regex.py)
    ],
    extras_require={
        "test": ["pytest", "peft", "openai"],
        "bench": ["matplotlib"],
    },
    entry_points={
        "console_scripts": ["mint = sglang_mint.cli:main"],
        "sglang.srt.plugins": ["mint = sglang_mint.sglang:register"],
    },
)
