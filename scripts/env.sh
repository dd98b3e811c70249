# Sourced by the scripts: where the project's tools live.
export SECKILL_TOOLS=${SECKILL_TOOLS:-$HOME/.cache/seckill-tools}
export PATH="$SECKILL_TOOLS/bin:$HOME/.cargo/bin:$PATH"
export SECKILL_TANSU="$SECKILL_TOOLS/bin/tansu"
export SECKILL_TEST_PYTHON="${SECKILL_TEST_PYTHON:-$SECKILL_TOOLS/venv/bin/python}"
