# Convenience targets; each one calls tasks.py, which needs only Python 3.11+
# and creates .venv on first use.
PYTHON ?= python3

.PHONY: demo test reliability slow browser bench sim clean

demo:
	$(PYTHON) tasks.py demo
test:
	$(PYTHON) tasks.py test
reliability:
	$(PYTHON) tasks.py reliability
slow:
	$(PYTHON) tasks.py slow
browser:
	$(PYTHON) tasks.py browser
bench:
	$(PYTHON) tasks.py bench
sim:
	$(PYTHON) tasks.py sim
clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache
