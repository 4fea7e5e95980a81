#!/usr/bin/env bash
# The prepared GPU check: see bench/gpu_check.py. OUT=dir sets the results folder
# (default ./gpu_results); --dry-run checks the steps without running them.
cd "$(dirname "$0")/.." && exec python bench/gpu_check.py "$@"
