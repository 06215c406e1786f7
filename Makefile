VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
ADDRESS ?= 127.0.0.1

.PHONY: app test lint bench demo

# Set up (idempotent), build the demo zoo on first start (with progress), then serve the app
# (streamlit run, importing what the pages need while the server starts: subnetviz/serve.py), on this machine
# only unless ADDRESS says otherwise (make app ADDRESS=0.0.0.0: set the access settings first).
app:
	bash scripts/bootstrap.sh
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m subnetviz demo build
	$(PY) -m subnetviz.serve run app.py --server.headless true --server.port $(PORT) --server.address $(ADDRESS)

# Set up (idempotent, with Debian chromium for the browser tests), lint, then every test on two workers
# (pytest-xdist; tests/conftest.py groups the tests by file and keeps the multi-process ones on one worker);
# the 25 slowest are listed at the end (the suite must stay well under 15 minutes).
test:
	bash scripts/bootstrap.sh --browser
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=25

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench:
	OMP_NUM_THREADS=1 $(PY) -m benches
