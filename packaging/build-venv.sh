#!/usr/bin/env bash
# Stage the application's virtualenv for the packages: STAGE/opt/tcpcopy-py, built with Debian's python3.11
# and made to work from /opt/tcpcopy-py once installed (shebangs, activate scripts, pyvenv.cfg and the
# paths compiled into the .pyc files all name the final path, never STAGE).
#
# The venv is built here, at package build time, not in postinst: a production host then needs no
# compiler, no libpcap-dev and no PyPI (pypcap has no wheel and builds from source).
# usage: build-venv.sh STAGE [PIP]     (PIP: a pip that supports --python, default: .venv/bin/pip)
set -euo pipefail
stage=$(realpath -m "$1")
pip=${2:-.venv/bin/pip}
prefix=/opt/tcpcopy-py
python=/usr/bin/python3.11
venv="$stage$prefix"
project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

rm -rf "$stage"
mkdir -p "$(dirname "$venv")"
"$python" -m venv --without-pip "$venv"
# the venv runs Debian's python3.11 by its versioned name: the package depends on exactly that
ln -sfn "$python" "$venv/bin/python3"
# Built from a clean copy of the sources: the checkout's build/ may hold objects compiled for another
# python (an editable install's), which setuptools would reuse, and compiled modules beside the sources.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$project" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.so' \
    --exclude=__pycache__ --exclude='*.egg-info' -cf - . | tar -C "$src" -xf -
# no wheel cache: a cached pypcap wheel may have been built by another python 3.11 (its RUNPATH named it)
"$pip" --python "$venv/bin/python" install --quiet --no-cache-dir --no-compile --no-warn-script-location "$src"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The hot path ships compiled by mypyc (setup.py), unless TCPCOPY_NO_COMPILE is set. Debian's python3.11 builds
# extensions with -g: the debug info would name this checkout and pip's build directory.
build=$(cd / && "$venv/bin/python" -c 'from appliance.core.buildinfo import build_info; print(build_info())')
case "${TCPCOPY_NO_COMPILE:-0}:$build" in
    0:"compiled (mypyc)"|[!0]*:interpreted) echo "build-venv.sh: hot path $build" ;;
    *) echo "build-venv.sh: the hot path is $build" >&2; exit 1 ;;
esac
find "$site" \( -path "$site/appliance/*" -o -path "$site/*__mypyc.*" \) -name '*.so' -type f \
    -exec strip --strip-debug {} +

# the lab (appliance/lab, tcpcopy-lab) is a development and demo tool: production packages do not carry it
rm -rf "$site/appliance/lab" "$venv/bin/tcpcopy-lab"
for dist in "$site"/tcpcopy_py-*.dist-info; do
    sed -i '/^appliance\/lab\//d; /^\.\.\/\.\.\/\.\.\/bin\/tcpcopy-lab,/d' "$dist/RECORD"
    sed -i '/^tcpcopy-lab *=/d' "$dist/entry_points.txt"
    # it names the temporary copy the package was built from
    rm -f "$dist/direct_url.json"
    sed -i '/direct_url\.json,/d' "$dist/RECORD"
done

# from STAGE/opt/tcpcopy-py to /opt/tcpcopy-py
for f in "$venv"/bin/*; do
    [ -L "$f" ] && continue
    sed -i "s|$venv|$prefix|g" "$f"
done
sed -i "s|$venv|$prefix|g" "$venv/pyvenv.cfg"
# never validated against mtimes: /opt is read-only under the units' ProtectSystem=strict
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$stage" -p / "$venv/lib"
if grep -rlI "$stage" "$venv"; then
    echo "build-venv.sh: the files above still name the staging directory" >&2
    exit 1
fi
# compiled modules included (binary files, so no -I): nothing names the directories it was built in
if grep -rlwF -e "$stage" -e "$project" -e "$src" "$venv"; then
    echo "build-venv.sh: the files above name the staging, the project or the build directory" >&2
    exit 1
fi
