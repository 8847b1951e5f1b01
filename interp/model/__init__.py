"""Models: the only package that knows TransformerLens. Loading and saving (`load`), the weight
layout (`layout`), LoRA (`lora`), hook and weight names and the readout (`hooks`), the smoke model
(`smoke`) and the export to plain transformers folders (`export`)."""
