# The two commands a new user needs: `make run` and `make test`.
PROMPT ?= What is the capital of France? Answer in one sentence.
MODEL ?= smollm2
CARGO_TEST ?= cargo test --release --workspace

.PHONY: run ask chat build models test-models test test-neon lint fuzz

# Fetch the default model if missing, build, and serve the OpenAI-compatible
# API on port 8080 (SIGTERM or Ctrl-C stops it).
run: build
	scripts/fetch-models $(MODEL)
	./target/release/lampo serve -m $(MODEL) --model-alias $(MODEL)

# Answer one prompt in the terminal.
ask: build
	scripts/fetch-models $(MODEL)
	./target/release/lampo run -m $(MODEL) --chat --temp 0 -p "$(PROMPT)"

# Interactive chat in the terminal.
chat: build
	scripts/fetch-models $(MODEL)
	./target/release/lampo chat -m $(MODEL)

build:
	cargo build --release

models:
	scripts/fetch-models smollm2

# What the tests read: the reference models, llama.cpp's tokenizer vectors,
# and the synthetic models of the architectures no package ships (written
# from a seed; llama.cpp's reference logits on them are in the repo).
test-models:
	scripts/fetch-models smollm2 qwen05b gemma270m vocab
	scripts/make-synthetic

# Every test on the detected SIMD path (then a check that `make run` will
# not rebuild); the kernels, the ops and a model's generation again on the
# portable (non-SIMD) path; `lampo serve` driven by the official openai
# Python SDK (SmolLM2; structured output and tool calls on
# Qwen2.5-Coder-0.5B); `lampo chat` and serve's logs in a real terminal;
# the NEON kernels under qemu when it can be installed; the Kubernetes
# manifests in deploy/ validated offline.
test: test-models
	$(CARGO_TEST)
	scripts/check-no-rebuild
	scripts/check-deploy
	LAMPO_PORTABLE=1 cargo test --release -p lampo-kernels
	LAMPO_PORTABLE=1 cargo test --release -p lampo-engine --test generation
	scripts/test-openai-sdk
	scripts/test-structured-output
	scripts/test-terminal
	scripts/test-neon

# The aarch64 NEON kernels under qemu; fails if the tools cannot be installed.
test-neon:
	scripts/test-neon --strict

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --release -- -D warnings

# Fuzz the GGUF parser for a minute (stable toolchain: RUSTC_BOOTSTRAP enables the sanitizer flags).
fuzz:
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run gguf_parse -- -max_total_time=60 -max_len=65536
