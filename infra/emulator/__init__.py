"""The upstream emulator: an OpenAI- and Anthropic-compatible server that answers as the benchmark
models did (recorded answers and their correctness), with realistic latency, injectable faults and
quality drift. Start it with ``switchyard emulator serve``; tests use :mod:`infra.emulator.testing`.
"""
