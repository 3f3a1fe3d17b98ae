# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.sha256
ARGS ?=

.PHONY: venv run test lint bench bench-explain bench-localisation bench-train bench-export bench-anomaly bench-train-tab clean-venv

# (Re)install only when requirements.txt or requirements-serve.txt (which it includes) changed since
# the last successful install.
REQUIREMENTS := requirements.txt requirements-serve.txt
venv:
	@want=$$(cat $(REQUIREMENTS) | sha256sum | cut -d' ' -f1); \
	if [ "$$(cat $(STAMP) 2>/dev/null)" = "$$want" ]; then \
		echo "$(VENV) is up to date with $(REQUIREMENTS)"; \
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
	$(PY) -m bench.api
	$(PY) -m bench.inspect

bench-explain: venv
	$(PY) -m bench.explanation $(ARGS)
	$(PY) -m bench.defect_explanation

# The issue-5 localisation figure: parts drawn at 448 px, the default model fine-tuned on them at
# 448 px (about 40 CPU-minutes on 2 cores; skipped while the run is newer than the data), then
# heatmap energy on the part per method and layer.
LOC_DATA := bench/results/data/parts448
LOC_RUN := bench/results/runs/parts448
LOC_LAYER := timm_model.blocks.4
bench-localisation: venv $(LOC_RUN)/model.safetensors
	$(PY) -m bench.explanation --parts-model $(LOC_RUN) --parts-data $(LOC_DATA) --n 120 \
		--method layercam --layer $(LOC_LAYER) --guided \
		--compare gradcam layercam@$(LOC_LAYER) guided-gradcam --out bench/results/localisation.json

$(LOC_DATA)/dataset_info.json: | venv
	$(PY) -m train.datasets parts --out $(LOC_DATA) --size 448 --seed 0 --overwrite

$(LOC_RUN)/model.safetensors: $(LOC_DATA)/dataset_info.json | venv
	HF_HUB_OFFLINE=1 $(PY) -m train.classification.train --model_name_or_path default --image_size 448x448 \
		--train_dir $(LOC_DATA)/train --validation_dir $(LOC_DATA)/validation --test_dir $(LOC_DATA)/test \
		--learning_rate 1e-3 --per_device_train_batch_size 32 --num_train_epochs 4 --seed 0 --disable_tqdm true \
		--output_dir $(LOC_RUN) --overwrite_output_dir true

# Eager vs ONNX float32 vs int8 (default classifier, demo pair, pipeline overhead); exports go to
# bench/results/export/ (reused while their command is unchanged), the JSON to bench/results/export.json.
bench-export: venv
	$(PY) -m bench.export $(ARGS)

# Fine-tunes the default model: digits (fp32, then bf16) and parts; see bench/train_classification.py.
bench-train: venv
	$(PY) -m bench.train_classification $(ARGS)

# A training through the Train tab's /train_start against the same command from the CLI.
bench-train-tab: venv
	$(PY) -m bench.train_tab $(ARGS)

# Issue 15: PatchCore-style anomaly detection from good images only (generated steel and parts).
bench-anomaly: venv
	$(PY) -m bench.anomaly $(ARGS)

clean-venv:
	rm -rf $(VENV)
