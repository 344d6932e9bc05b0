# Sourced by gpu_check.sh and gpu_bench.sh: where .device-site/ came along (scripts/device_site.sh),
# unpack its wheels once into /tmp/int8kern-site and put both in front of PYTHONPATH.
if [ -d .device-site ]; then
  if [ ! -d /tmp/int8kern-site ] && ls .device-site/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/int8kern-site \
      .device-site/wheels/*.whl || echo "device_env: could not unpack .device-site/wheels"
  fi
  export PYTHONPATH="/tmp/int8kern-site:$PWD/.device-site/site${PYTHONPATH:+:$PYTHONPATH}"
fi
