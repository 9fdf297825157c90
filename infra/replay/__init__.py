"""The traffic replayer: drives a gateway (or the emulator) like real clients, from benchmark
prompts, with ground-truth feedback and named drift scenarios. ``switchyard replay``."""
