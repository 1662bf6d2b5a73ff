# Two commands: `make demo` (the main job, end to end) and `make test`.
# Both create .venv and install pinned versions (constraints.txt) on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: setup serve-deps board-setup test demo pipeline lint clean ci-gate board-wheels board-arm64 test-arm64

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train,dev,serve]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

# A board's device-side install with the older LiteRT package (tflite-runtime, numpy 1.x), no torch:
# tests/test_board_install.py runs bench and predict in it against bundles made by the host venv.
BOARD_VENV ?= .venv-board
BOARD_STAMP := $(BOARD_VENV)/.installed-$(shell cat pyproject.toml constraints-board.txt | sha256sum | cut -c1-12)

$(BOARD_STAMP): pyproject.toml constraints-board.txt
	@test -x $(BOARD_VENV)/bin/python || $(PY) -m venv $(BOARD_VENV)
	$(BOARD_VENV)/bin/python -m pip install -q -c constraints-board.txt -e '.[rpi-legacy]'
	@rm -f $(BOARD_VENV)/.installed-*
	@touch $@

board-setup: $(BOARD_STAMP)

# make test also builds (first time, ~25 min) or reuses the emulated arm64 board for tests/test_arm64.py;
# ARM64=0 leaves it out (those tests then skip, except under CI=true where they fail).
ARM64 ?= 1
test: setup serve-deps board-setup $(if $(filter 1,$(ARM64)),board-arm64)
	$(BIN)/python -m pytest -q

# The DICOM peers tests/serve talks to (dcmtk's storescu/echoscu, Orthanc as the PACS, dicom3tools'
# dciodvfy for every SR, chromium and its driver for the page's browser test), from Debian, installed where missing.
SERVE_APT := dcmtk orthanc dicom3tools chromium chromium-driver
serve-deps:
	@command -v storescu >/dev/null && command -v Orthanc >/dev/null && command -v dciodvfy >/dev/null && \
		command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SERVE_APT); }

lint: setup
	$(BIN)/ruff check edgecxr tests benchmarks
	$(BIN)/lint-imports

demo: setup
	$(BIN)/edgecxr demo

pipeline: setup
	$(BIN)/edgecxr pipeline $(or $(DATA),../shared/data/kermany224/train) --quick --out runs/quick

clean:
	rm -rf dist runs .pytest_cache

# CI: int8 bundles of the three targets from the shipped model and their fp32 twins, gated on the
# shipped validation images (against the PyTorch float reference) and on the seeded shift stress set
# (100 validation images x 10 corruptions x 3 severities, against the fp32 twin), per corruption.
CI_MODEL ?= $(firstword $(wildcard models/mnv2-ref-pruned*.pt) models/mnv2-ref.pt)
CI_STRESS_IMAGES ?= 100
# stress rows known to fail with the shipped recipes (shown as KNOWN with their numbers; see
# benchmarks/quantization.md); keep in step with KNOWN_STRESS_FAILURES in edgecxr/host/workflows.py.
# Every corruption passes; the near-threshold flip rate (16-24% of the stress images within 0.05 of the
# threshold, against a limit of 10%) does not yet, on any backend: issue 26.
CI_EXPECT_FAIL ?= litert:near-threshold onnxruntime:near-threshold openvino:near-threshold
ci-gate: setup
	$(BIN)/edgecxr export $(CI_MODEL) --target rpi,nuc,jetson,x86-ort --precision both \
		--data data/kermany224-val --calibration calibration/kermany224 --out dist/ci --force
	$(BIN)/edgecxr data stress data/kermany224-val --max-images $(CI_STRESS_IMAGES) --out dist/ci/stress --force
	$(BIN)/edgecxr gate dist/ci/rpi4-int8 dist/ci/nuc-int8 dist/ci/jetson-orin-nano-int8 dist/ci/x86-ort-int8 \
		--stress dist/ci/stress --summary dist/ci/gate-summary.md --details dist/ci/gate.json \
		$(foreach x,$(CI_EXPECT_FAIL),--expect-fail $(x))

# An emulated arm64 board (Debian 12 bookworm arm64 under QEMU user-mode; needs root on a Debian/Ubuntu
# host): `make board-wheels TARGET=rpi4` puts the edgecxr wheel and the board's dependency wheels
# (manylinux aarch64, Python 3.11) in dist/board-wheels/rpi4, the folder a board with no network installs
# from; `make board-arm64` builds or reuses the board (cache: $${EDGECXR_CACHE:-~/.cache/edgecxr}) and
# installs edgecxr[rpi,nuc,jetson] into it from such a folder with pip --no-index, its network cut;
# `make board-arm64 CMD='edgecxr verify dist/rpi4-int8'` runs a command inside it (QEMU_CPU=cortex-a72: a Pi 4).
TARGET ?= all
board-wheels: setup
	$(BIN)/python tools/board_wheels.py $(TARGET) --out dist/board-wheels/$(TARGET)

board-arm64:
	$(MAKE) board-wheels TARGET=all
	tools/board_arm64.sh rootfs
	tools/board_arm64.sh install dist/board-wheels/all
	$(if $(CMD),tools/board_arm64.sh run $(CMD))

test-arm64: setup
	$(BIN)/python -m pytest -q tests/test_arm64.py
