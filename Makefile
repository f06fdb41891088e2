# The two commands of the README. Both install whatever is missing first.
.PHONY: run test bench

run:
	./scripts/setup.sh
	HF_HUB_OFFLINE=1 .venv/bin/sonicgate serve $(ARGS)

test:
	./scripts/setup.sh --test
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/ruff format --check src tests bench scripts
	.venv/bin/mypy
	.venv/bin/deptry src
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q $(ARGS)

# All benchmarks against servers they start; figures in bench/results/ (summary.md).
bench:
	./scripts/setup.sh --test
	HF_HUB_OFFLINE=1 .venv/bin/python -m bench $(ARGS)
