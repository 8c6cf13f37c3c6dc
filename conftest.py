"""Loads the lora-bench pytest plugin for the bench suite and the unit tests."""

pytest_plugins = ("lora_bench.plugin", "lora_bench.plugin_repro", "pytester")
