"""Teachers that know faces: fit tiny twins and LoRA-adapt any teacher on a dataset's real frames.

`fit` (tiny twins, whole VAE + UNet), `adapt` (LoRA on the UNet attention projections),
`catalog` (what `ablate teachers list` shows) and `cli` (the `ablate teachers` group).
Loading a fitted twin or an adapter lives with the teachers: `ablate/model/teachers/loading.py`
(the one rule: `twin`, then the LoRA step) and `lora.py` (adapters tied to their base).
"""
