# `make demo` and `make test` do all of their own set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]' > $(VENV)/pip.log 2>&1 \
	  || { tail -40 $(VENV)/pip.log; echo "pip install failed; full log in $(VENV)/pip.log"; exit 1; }
# dev only: facenet-pytorch is the independent reference tests/test_mtcnn.py checks the
# vendored MTCNN (ablate/data/mtcnn) against; ablate itself does not need it
	$(BIN)/python -m pip install --progress-bar off --no-deps facenet-pytorch==2.6.0 >> $(VENV)/pip.log 2>&1 \
	  || { tail -40 $(VENV)/pip.log; echo "pip install of facenet-pytorch (the tests' MTCNN reference) failed; log in $(VENV)/pip.log"; exit 1; }
	$(BIN)/python -c "import ablate, torch, diffusers, timm" 
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ablate demo

test: $(STAMP)
	$(BIN)/ruff check ablate tests
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=15 tests

# the fast tier: every test not marked slow, ray, subprocess, postgres or browser (the marks
# come from what each test uses: tests/conftest.py)
FAST := not (slow or ray or subprocess or postgres or browser)
test-fast: $(STAMP)
	$(BIN)/ruff check ablate tests
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "$(FAST)" tests

lint: $(STAMP)
	$(BIN)/ruff check ablate tests
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) results/runs
