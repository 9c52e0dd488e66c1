# One command gates everything: `make test` (lint, format check, types, tests). CI runs exactly that.
VENV := .venv
BIN := $(VENV)/bin
CORPUS ?= ../shared/corpus
# What `make unit` runs and the first half of `make test`: every test that needs neither root (namespaces,
# nftables), the lab nor a browser. Only registered markers (pyproject.toml; tests/test_make_targets.py checks).
UNIT_TESTS := not root and not e2e and not browser

.PHONY: test unit lint demo bench fmt security pcaps fuzz-long

test: ## Install what is missing, then lint, format check, mypy (strict) and pytest.
	@deploy/bootstrap.sh test
	$(BIN)/ruff check egress tests bench rules
	$(BIN)/ruff format --check egress tests bench rules
	$(BIN)/mypy
	# The tests in three parts, each test in exactly one: what `make unit` runs, on every core; then the rest of the
	# lab tests (root, the lab, the browser) that are not the security suite's, one after the other, as they share
	# the host's namespaces, nftables and ports; then the security suite's modules side by side, as `make security`
	# runs them (each module builds a lab with names of its own; a module stays on one worker). All three always
	# run; the target fails if any failed. They append to one security-suite file, so the table printed at the very
	# end has every row (the first part's fuzz rows too).
	@report=$$(mktemp --suffix=.jsonl) && status=0 && \
	env -u PYTHONDONTWRITEBYTECODE EGRESS_SECURITY_REPORT=$$report $(BIN)/pytest -n auto -m "$(UNIT_TESTS)" \
		|| status=$$?; \
	EGRESS_SECURITY_REPORT=$$report $(BIN)/pytest -m "not ($(UNIT_TESTS)) and not security" \
		|| status=$$((status | $$?)); \
	EGRESS_SECURITY_REPORT=$$report $(BIN)/pytest -n auto --dist loadfile -p no:cacheprovider \
		-m "not ($(UNIT_TESTS)) and security" || status=$$((status | $$?)); \
	rm -f "$$report"; exit $$status

unit: ## The fast loop: every test that needs neither root, the lab nor a browser, on both cores, a tenth of each fuzz budget (at least 10 examples).
	@deploy/bootstrap.sh unit
	# Three plain pytest processes side by side on the two cores (a third of each one's time its tests wait on
	# processes they started), each collecting its part of the test modules (tests/run_halves.py, balanced by the
	# CPU each module took, tests/unit_cpu.json), each in its own random order; their outputs one after the other,
	# then one summary; the target fails if any part failed. Not xdist: its controller and a collection of every
	# module per worker cost ~25 s of CPU (docs/testing.md). Bytecode caching on even where the shell turns it
	# off: compiling mitmproxy and hypothesis again costs more than a tenth of the run.
	env -u PYTHONDONTWRITEBYTECODE EGRESS_FUZZ_SCALE=0.1 $(BIN)/python -m tests.run_halves -q -m "$(UNIT_TESTS) and not fuzz"

security: ## The security suite: every technique, fault and fuzz run (tests/security/), then its one table.
	@deploy/bootstrap.sh security
	# A module keeps its lab on one worker (--dist loadfile): a lab takes seconds to build.
	$(BIN)/pytest -n auto --dist loadfile -m "security or fuzz" -p no:cacheprovider

pcaps: ## Record pcaps/ again (root): each demo attempt and each technique of the suite at the gateway's sandbox side.
	@deploy/bootstrap.sh security
	$(BIN)/egress lab record all --out pcaps
	# The suite with EGRESS_RECORD_PCAPS set keeps each technique's capture as pcaps/suite/<technique>.pcap (a
	# failing technique is still recorded: the make goes on); then one manifest row per new file, from the scanner.
	rm -rf pcaps/suite
	-EGRESS_RECORD_PCAPS=$(CURDIR)/pcaps $(BIN)/pytest -n auto --dist loadfile -m security -p no:cacheprovider \
		--ignore-glob='tests/security/test_fault*' tests/security
	$(BIN)/python -m tests.security.pcaps_manifest pcaps

fuzz-long: ## The long coverage-guided run: every atheris target for FUZZ_SECONDS (default 600) each, corpus kept in .fuzz/.
	@deploy/bootstrap.sh unit
	$(BIN)/python bench/fuzz.py --seconds $(or $(FUZZ_SECONDS),600)

lint:
	$(BIN)/ruff check egress tests bench rules
	$(BIN)/ruff format --check egress tests bench rules
	$(BIN)/mypy

fmt:
	$(BIN)/ruff format egress tests bench rules
	$(BIN)/ruff check --fix egress tests bench rules

demo: ## Install what is missing, then run the lab demo (root: namespaces, nftables).
	@deploy/bootstrap.sh demo
	$(BIN)/egress lab demo

bench: ## Side-by-side benchmarks: scanner vs nDPI's ndpiReader; gateway vs direct forwarding and Squid.
	@deploy/bootstrap.sh bench
	$(BIN)/python bench/scan.py --corpus $(CORPUS)
	$(BIN)/python bench/gateway.py
