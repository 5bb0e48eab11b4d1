#!/bin/sh
# What the official nginx image does before nginx starts, for the templates:
# /etc/nginx/templates/X.template -> /etc/nginx/conf.d/X, with only the
# environment variables whose names match NGINX_ENVSUBST_FILTER substituted.
set -eu
if [ "${1:-}" = nginx ]; then
  filter=${NGINX_ENVSUBST_FILTER:-}
  vars=$(env | cut -d= -f1 | grep -E "${filter:-.}" | sed 's/^/$/' | tr '\n' ' ')
  for t in /etc/nginx/templates/*.template; do
    [ -e "$t" ] || continue
    out="/etc/nginx/conf.d/$(basename "$t" .template)"
    envsubst "$vars" < "$t" > "$out"
    echo "docker-entrypoint: rendered $t -> $out"
  done
fi
exec "$@"
