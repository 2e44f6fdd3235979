#!/bin/sh
# A CI job that pulls an image through its group's Dependency Proxy, using only
# the variables the platform gives every job:
#
#   flask --app examples.platform ci run GROUP/PROJECT --user USER -- sh examples/ci/job.sh
#
# $1 is the image (default alpine:latest); $2 an existing folder to keep the
# pulled image in (default: a temporary folder, removed when the job ends).
set -eu

: "${CI_DEPENDENCY_PROXY_SERVER:?run this inside a CI job (flask --app examples.platform ci run ...)}"
image="${1:-alpine:latest}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT INT TERM
dest="${2:-$tmp}/image"

# --tls-verify=false because the example platform serves plain HTTP; drop it
# behind HTTPS. The password goes through stdin so it never shows in `ps`.
printf '%s' "$CI_DEPENDENCY_PROXY_PASSWORD" | skopeo login --tls-verify=false \
    --authfile "$tmp/auth.json" \
    -u "$CI_DEPENDENCY_PROXY_USER" --password-stdin \
    "$CI_DEPENDENCY_PROXY_SERVER"

skopeo copy --src-tls-verify=false --authfile "$tmp/auth.json" \
    "docker://$CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX/$image" "dir:$dest"

echo "Pulled $CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX/$image into $dest:"
ls -l "$dest"
