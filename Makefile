# smallfoot: `make run` (main job) and `make test` (lint + tests) work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format package-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "Fashion-MNIST: already installed in /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist (apt-get)"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
		&& echo "Fashion-MNIST: installed in /usr/share/datasets/fashion-mnist" \
		|| echo "Fashion-MNIST: apt-get failed; smallfoot will use scikit-learn's digits instead"; \
	else \
		echo "Fashion-MNIST: not installed (needs root + apt-get: apt-get install dataset-fashion-mnist); digits will be used"; \
	fi
	touch $(STAMP)

run: install
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		$(BIN)/smallfoot plan --model cnn4 --dataset fashion-mnist --batch-size 128 --budget 24MiB --train --epochs 3; \
	else \
		echo "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): planning and training on scikit-learn's digits instead"; \
		$(BIN)/smallfoot plan --model cnn4 --dataset digits --batch-size 128 --budget 3MiB --train --epochs 10; \
	fi

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The sdist and wheel build from the checkout, the wheel installs on its own (no editable
# path), imports and reports the version it was built with.
package-check: install
	@rm -rf .package-check && mkdir -p .package-check
	$(BIN)/python -m build --sdist --wheel --outdir .package-check/dist . >.package-check/build.log 2>&1 \
		|| (cat .package-check/build.log; exit 1)
	$(BIN)/pip install --quiet --no-deps --no-compile --target .package-check/site .package-check/dist/*.whl
	cd .package-check && PYTHONPATH=site $(abspath $(BIN))/python -c \
		"import smallfoot, importlib.metadata as m; assert smallfoot.__file__.startswith('$(abspath .package-check)/site'), smallfoot.__file__; assert m.version('smallfoot') == smallfoot.__version__; import importlib.util as u; assert u.find_spec('benchmarks') is None, 'benchmarks must stay out of the wheel'"
	PYTHONPATH=.package-check/site .package-check/site/bin/smallfoot --version
	@rm -rf .package-check

test: lint package-check
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .package-check
