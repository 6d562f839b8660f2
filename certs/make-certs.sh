#!/bin/sh
# make-certs.sh: a development CA and per-service certificates for the
# sidecar's mTLS (ECDSA P-256), identities in Consul's SPIFFE format:
#
#   spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>
#
# Every leaf carries that URI SAN plus DNS SANs <service> and localhost and
# IP SAN 127.0.0.1, EKU serverAuth+clientAuth, so one file serves a sidecar
# both as an inbound server and as an outbound client.
#
# Layout of --out DIR (default certs/out, ignored by git):
#   DIR/ca/<ca-name>.pem, .key   one directory entry per CA (root)
#   DIR/ca-bundle.pem            every DIR/ca/*.pem concatenated: the tls.ca
#                                file; several roots let a CA rotate
#   DIR/<service>.pem, .key      leaf certificate and key, signed by --ca-name
#
# An existing key is never overwritten unless asked: a service whose key
# exists is skipped with a message (--renew re-issues its certificate with
# the existing key, --force replaces key and certificate); an existing CA is
# reused (--force-ca replaces it, which orphans every leaf it signed).
# See certs/README.md.
set -eu

usage() {
    cat <<USAGE
usage: $0 [options] [SERVICE...]
  --out DIR            output directory (default: certs/out next to this script)
  --trust-domain TD    SPIFFE trust domain (default: example.org)
  --dc DC              datacenter in the identity (default: dc1)
  --days N             leaf validity in days (default: 365)
  --ca-days N          CA validity in days when a CA is created (default: 3650)
  --ca-name NAME       CA that signs (created when missing; default: ca)
  --expired            issue leaves that expired yesterday (tests)
  --renew              re-issue certificates of services whose key exists
  --force              replace the keys and certificates of the named services
  --force-ca           replace the CA's key and certificate (leaves it signed stop verifying)
  -h, --help           this text
Without SERVICE, only makes sure the CA exists and rewrites ca-bundle.pem.
USAGE
}

die() { echo "make-certs: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
out="$here/out"
td=example.org
dc=dc1
days=365
ca_days=3650
ca_name=ca
expired=0
renew=0
force=0
force_ca=0

while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
        --trust-domain) [ $# -ge 2 ] || die "--trust-domain needs a value"; td=$2; shift 2 ;;
        --dc) [ $# -ge 2 ] || die "--dc needs a value"; dc=$2; shift 2 ;;
        --days) [ $# -ge 2 ] || die "--days needs a value"; days=$2; shift 2 ;;
        --ca-days) [ $# -ge 2 ] || die "--ca-days needs a value"; ca_days=$2; shift 2 ;;
        --ca-name) [ $# -ge 2 ] || die "--ca-name needs a value"; ca_name=$2; shift 2 ;;
        --expired) expired=1; shift ;;
        --renew) renew=1; shift ;;
        --force) force=1; shift ;;
        --force-ca) force_ca=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) break ;;
    esac
done

command -v openssl >/dev/null 2>&1 || die "openssl not found"

# Names end up in file names, SANs and identities: keep them boring.
valid_label() { printf '%s' "$1" | grep -Eq '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'; }
valid_label "$dc" || die "--dc '$dc': use lower-case letters, digits and '-'"
valid_label "$ca_name" || die "--ca-name '$ca_name': use lower-case letters, digits and '-'"
printf '%s' "$td" | grep -Eq '^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$' ||
    die "--trust-domain '$td': use a lower-case DNS name (SPIFFE trust domains are lower case)"
case "$days" in ''|*[!0-9]*|0) die "--days '$days': a positive number of days" ;; esac
case "$ca_days" in ''|*[!0-9]*|0) die "--ca-days '$ca_days': a positive number of days" ;; esac
for svc in "$@"; do
    valid_label "$svc" || die "service '$svc': use lower-case letters, digits and '-'"
done

mkdir -p "$out/ca"
chmod 755 "$out"
chmod 700 "$out/ca"       # CA keys
umask 077                 # keys: 600; certificates are chmod 644 below
work=$(mktemp -d "${TMPDIR:-/tmp}/make-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

newkey() {  # newkey FILE: a fresh P-256 key (PKCS#8 PEM), mode 600
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.tmp" 2>"$work/err" ||
        { cat "$work/err" >&2; die "cannot create key $1"; }
    mv -f "$1.tmp" "$1"
}

# ---- CA ----
ca_key="$out/ca/$ca_name.key"
ca_crt="$out/ca/$ca_name.pem"
if [ -e "$ca_key" ] && [ "$force_ca" = 0 ]; then
    [ -s "$ca_crt" ] || die "$ca_key exists but $ca_crt does not; restore it or use --force-ca"
    echo "make-certs: using existing CA $ca_crt (key kept; --force-ca replaces it)"
else
    cat >"$work/ca.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca_ext
[dn]
O = Sidecar development
CN = $ca_name ($td)
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:spiffe://$td
CNF
    newkey "$ca_key"
    openssl req -x509 -new -config "$work/ca.cnf" -key "$ca_key" -sha256 -days "$ca_days" \
        -set_serial "0x$(openssl rand -hex 16)" -out "$ca_crt.tmp" 2>"$work/err" ||
        { cat "$work/err" >&2; die "cannot create CA certificate $ca_crt"; }
    chmod 644 "$ca_crt.tmp"
    mv -f "$ca_crt.tmp" "$ca_crt"
    echo "make-certs: created CA $ca_crt"
fi

# ---- bundle: every CA in DIR/ca, so leaves of old and new roots verify ----
: >"$out/ca-bundle.pem.tmp"
for f in "$out"/ca/*.pem; do
    [ -e "$f" ] || continue
    cat "$f" >>"$out/ca-bundle.pem.tmp"
done
chmod 644 "$out/ca-bundle.pem.tmp"
mv -f "$out/ca-bundle.pem.tmp" "$out/ca-bundle.pem"

# ---- leaves, signed with `openssl ca` so dates can lie in the past ----
if [ "$expired" = 1 ]; then
    # `openssl x509/req -days` refuse non-positive values in 3.0 and there is
    # no -not_before before 3.4: `openssl ca -startdate/-enddate` takes both.
    start=$(date -u -d '-3 days' +%Y%m%d%H%M%SZ)
    end=$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)
    dates="-startdate $start -enddate $end"
else
    start=$(date -u -d '-5 minutes' +%Y%m%d%H%M%SZ)   # tolerate small clock skew
    dates="-startdate $start -days $days"
fi

for svc in "$@"; do
    key="$out/$svc.key"
    crt="$out/$svc.pem"
    if [ -e "$key" ] && [ "$force" = 0 ]; then
        if [ "$renew" = 0 ]; then
            echo "make-certs: $key exists, not overwriting; skipping $svc (--renew re-issues its certificate, --force replaces key and certificate)"
            continue
        fi
        echo "make-certs: re-issuing $crt with the existing key $key"
    else
        newkey "$key"
    fi
    id="spiffe://$td/ns/default/dc/$dc/svc/$svc"
    db="$work/db-$svc"
    mkdir -p "$db/new"
    : >"$db/index.txt"
    cat >"$db/ca.cnf" <<CNF
[ca]
default_ca = dev
[dev]
database = $db/index.txt
new_certs_dir = $db/new
rand_serial = yes
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
email_in_dn = no
[any]
commonName = supplied
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $svc
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:$id, DNS:$svc, DNS:localhost, IP:127.0.0.1
CNF
    openssl req -new -config "$db/ca.cnf" -key "$key" -out "$db/req.csr" 2>"$work/err" ||
        { cat "$work/err" >&2; die "cannot create request for $svc"; }
    # shellcheck disable=SC2086 # $dates is a list of options
    openssl ca -batch -notext -config "$db/ca.cnf" -extensions leaf -cert "$ca_crt" \
        -keyfile "$ca_key" -in "$db/req.csr" -out "$crt.tmp" $dates 2>"$work/err" ||
        { cat "$work/err" >&2; die "cannot sign certificate for $svc"; }
    chmod 644 "$crt.tmp"
    mv -f "$crt.tmp" "$crt"
    echo "make-certs: issued $crt for $id ($( [ "$expired" = 1 ] && echo expired || echo "$days days"), CA $ca_name)"
done
