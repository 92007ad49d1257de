# The two commands of the README (both set up a fresh machine first, idempotently):
#   make serve   serve SmolLM2-135M-Instruct through the plugin on 127.0.0.1:8000
#   make test    unit tests + fast end-to-end tests
#   make nightly multicard e2e, accuracy gates, every bench suite, compare with the last nightly
.PHONY: setup serve test test-all bench nightly
setup:
	ci/setup.sh
serve:  # extra vllm serve flags: make serve ARGS='--max-num-seqs 16'
	ci/serve.sh $(ARGS)
test:  # extra pytest arguments: make test ARGS='-k rms'
	ci/test.sh $(ARGS)
test-all:  # includes tests marked slow
	ci/test.sh -m ""
bench:
	ci/setup.sh && .venv/bin/python -m bench decode
nightly:  # ci/nightly.py's options: make nightly ARGS='--dry-run'
	ci/nightly.sh $(ARGS)
