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
# no wheel cache: a cached pypcap wheel may have been built by another python 3.11 (its RUNPATH named it)
"$pip" --python "$venv/bin/python" install --quiet --no-cache-dir --no-compile --no-warn-script-location "$project"

# the lab (appliance/lab, tcpcopy-lab) is a development and demo tool: production packages do not carry it
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/appliance/lab" "$venv/bin/tcpcopy-lab"
for dist in "$site"/tcpcopy_py-*.dist-info; do
    sed -i '/^appliance\/lab\//d; /^\.\.\/\.\.\/\.\.\/bin\/tcpcopy-lab,/d' "$dist/RECORD"
    sed -i '/^tcpcopy-lab *=/d' "$dist/entry_points.txt"
done

# from STAGE/opt/tcpcopy-py to /opt/tcpcopy-py
for f in "$venv"/bin/*; do
    [ -L "$f" ] && continue
    sed -i "s|$venv|$prefix|g" "$f"
done
sed -i "s|$venv|$prefix|g" "$venv/pyvenv.cfg"
# never validated against mtimes: /opt is read-only under the units' ProtectSystem=strict
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$stage" -p / "$venv/lib"
if grep -rlI --exclude=direct_url.json "$stage" "$venv"; then
    echo "build-venv.sh: the files above still name the staging directory" >&2
    exit 1
fi
