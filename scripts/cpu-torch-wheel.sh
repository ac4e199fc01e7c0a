# shellcheck shell=bash
# Sourced by setup-venv.sh and build-wheelhouse.sh: where is the CPU build of torch?
#
# On x86_64, PyPI's torch wheel is the CUDA build (several GB); this machine keeps the CPU
# build on disk (/opt/wheels, or PIP_FIND_LINKS). cpu_torch_wheel_dir VERSION prints the
# folder that holds torch-VERSION+cpu for cp311/x86_64 and fails when there is none.
cpu_torch_wheel_dir() {
    local version=${1:-*} d
    for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
        d=${d#file://}
        if compgen -G "$d/torch-${version}+cpu-cp311-*x86_64.whl" >/dev/null; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# cpu_torch_wheel_missing VERSION: why we stop without that wheel, and how to fetch it once.
cpu_torch_wheel_missing() {
    local version=${1:-2.13.0}
    echo "no CPU wheel torch-${version}+cpu for cp311/x86_64 in PIP_FIND_LINKS or /opt/wheels;" \
        "refusing to download PyPI's CUDA build (DRAGON_ALLOW_CUDA_TORCH=1 to allow it). Fetch the" \
        "CPU wheel once: pip download torch==${version} --no-deps --only-binary=:all:" \
        "--python-version 3.11 --platform manylinux_2_28_x86_64" \
        "--index-url https://download.pytorch.org/whl/cpu -d /opt/wheels"
}
