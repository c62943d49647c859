"""What a LoRA adapter is, before any catalog or engine holds it.

The adapter-format knowledge every layer above shares: PEFT folders and their
checks (``peft``, reading ``safetensors_io``), what a PEFT tensor name means
(``lora_keys``; the base-model module it names, ``module_paths``; config keys
matched without regexes, ``pattern_keys``), the one-rank rewrite SGLang needs
(``uniform_rank``; stacked modules completed with zeros, ``stack_fill``), the base model
an adapter must fit (``base_model``) and which form a folder holds (``folder_form``). The packed format (``sglang_mint.packed``) and the
catalog build on it; nothing here imports them, sglang, or (at import) torch.
"""
