# The verbs people expect; each one calls a script in scripts/.
.PHONY: install gen lint test bench run

install:
	scripts/bootstrap

gen:
	scripts/bootstrap && .venv/bin/python scripts/gen_protos.py

lint:
	scripts/lint

test:
	scripts/test

bench:
	scripts/bootstrap && .venv/bin/python -m bench

run:
	scripts/run
