#!/usr/bin/env bash
# Packs dmltune's dependencies that a GPU machine without package access lacks (it has torch and
# torchvision) into parts you can copy over one by one, with a script that installs them there.
# A GPU machine that can reach PyPI does not need this: `pip install -e '.[gpu]'` there instead.
#
#   bash benchmarks/offline_bundle.sh [--python 3.12] [--part-mb 50] [EXTRA_PATH ...]
#
# Run it from a checkout on a machine with PyPI access. It writes the git-ignored folder
# .gpu-bundle/: part.aa, part.ab, ... (a split tar of wheels built for that Python on x86-64 Linux,
# plus each EXTRA_PATH, e.g. a dataset folder, under extra/) and activate.sh. On the GPU machine, in
# a checkout of the same commit:
#   cat .gpu-bundle/part.* > /tmp/gb/b.tar          (copy the parts there first, in order)
#   source .gpu-bundle/activate.sh && python benchmarks/gpu_suite.py
# activate.sh unpacks the tar once, installs the wheels into /tmp/site (no index, no dependencies
# resolved), puts the checkout and /tmp/site on PYTHONPATH and turns Ray's token auth off.
set -euo pipefail
py=3.12
part_mb=50
extras=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) py="$2"; shift 2 ;;
    --part-mb) part_mb="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) extras+=("$1"); shift ;;
  esac
done
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu-bundle/' .git/info/exclude 2>/dev/null || echo '/.gpu-bundle/' >> .git/info/exclude
rm -rf .gpu-bundle && mkdir -p .gpu-bundle/stage/wheels .gpu-bundle/stage/extra
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
# the versions this project is tested with, and what they import that a machine with torch, numpy,
# pandas and scipy (the GPU machine's image) lacks; add others to the list if yours lacks them
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" -d .gpu-bundle/stage/wheels \
  ray==2.60.0 optuna==5.0.0 faiss-cpu==1.15.1 pytorch-metric-learning==2.9.0 pydantic pydantic-core \
  annotated-types typing-inspection jsonschema referencing rpds-py jsonschema-specifications \
  tensorboardX alembic colorlog sqlalchemy mako greenlet
for p in "${extras[@]+"${extras[@]}"}"; do cp -r "$p" .gpu-bundle/stage/extra/; done
tar -C .gpu-bundle/stage -cf - . | split -b "${part_mb}M" - .gpu-bundle/part.
rm -rf .gpu-bundle/stage
cat > .gpu-bundle/activate.sh <<'ACT'
if [ ! -d /tmp/site/ray ]; then
  mkdir -p /tmp/gb/x && tar -C /tmp/gb/x -xf /tmp/gb/b.tar &&
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/gb/x/wheels/*.whl &&
  rm -rf /tmp/gb/extra && mv /tmp/gb/x/extra /tmp/gb/extra
fi
export PYTHONPATH="$PWD:/tmp/site" RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
ACT
ls -la .gpu-bundle
echo "$(ls .gpu-bundle/part.* | wc -l) parts in .gpu-bundle/: copy them to the GPU machine, join them into /tmp/gb/b.tar, then source .gpu-bundle/activate.sh"
