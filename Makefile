# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.sha256
ARGS ?=

.PHONY: venv run test lint bench bench-explain bench-train clean-venv

# (Re)install only when requirements.txt changed since the last successful install.
venv:
	@want=$$(sha256sum requirements.txt | cut -d' ' -f1); \
	if [ "$$(cat $(STAMP) 2>/dev/null)" = "$$want" ]; then \
		echo "$(VENV) is up to date with requirements.txt"; \
	else \
		[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || exit 1; \
		$(PY) -m pip install --disable-pip-version-check -r requirements.txt || exit 1; \
		echo "$$want" > $(STAMP); \
	fi

run: venv
	$(PY) app.py $(ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

bench: venv
	$(PY) -m bench.classification
	$(PY) -m bench.segmentation

bench-explain: venv
	$(PY) -m bench.explanation $(ARGS)
	$(PY) -m bench.defect_explanation

# Fine-tunes the default model: digits (fp32, then bf16) and parts; see bench/train_classification.py.
bench-train: venv
	$(PY) -m bench.train_classification $(ARGS)

clean-venv:
	rm -rf $(VENV)
