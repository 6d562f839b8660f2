# Sourced by the container tests' shell helpers: podman as root on these
# machines needs the runc runtime and no default rlimits (the sandbox refuses
# raising them). The settings live in a file of the tests', not in /etc.
SC_CT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$SC_CT_DIR/containers.conf}
