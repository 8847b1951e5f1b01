"""Models: the only package that knows TransformerLens. Loading and saving (`load`), the weight
layout (`layout`), LoRA (`lora`), hook and weight names and the readout (`hooks`), the smoke model
(`smoke`), attention through SDPA where no hook reads the pattern (`attention`), the export to
plain transformers folders (`export`), what interp keeps about a model besides its weights and
how to copy one (`state`), and a saved folder's file names (`files`)."""
