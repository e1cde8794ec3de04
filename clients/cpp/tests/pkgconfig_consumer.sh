#!/bin/sh
# Installs the client build in $1 into a temporary prefix, then compiles and
# runs the out-of-tree program $2 with nothing but pkg-config's flags.
set -eu
build=$1
src=$2
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
pc=$(find "$prefix" -name worker_heartbeat_client.pc)
[ -n "$pc" ] || { echo "no worker_heartbeat_client.pc installed"; exit 1; }
PKG_CONFIG_PATH=$(dirname "$pc")
export PKG_CONFIG_PATH
echo "pkg-config: $(pkg-config --cflags --libs worker_heartbeat_client)"
# shellcheck disable=SC2046
g++ -Wall -Wextra -Werror -o "$prefix/consumer" "$src" $(pkg-config --cflags --libs worker_heartbeat_client)
LD_LIBRARY_PATH=$(pkg-config --variable=libdir worker_heartbeat_client) "$prefix/consumer"
