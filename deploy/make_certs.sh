#!/bin/sh
# A local certificate authority and certificates for TLS / mutual TLS between the services
# (`make certs`; the tests run it into a temporary folder). For a testbed only: the keys are
# written unencrypted, and the CA signs whatever this script asks it to.
#
#   deploy/make_certs.sh [DIR]        (default: certs/, ignored by git)
#
# DIR/ca.pem            the CA every side trusts (--tls-ca, --tls-client-ca)
# DIR/cloud.pem, .key   the cloud's certificate: cloud, localhost, 127.0.0.1, ::1 (server; client too,
#                       for its own TLS health check)
# DIR/edge.pem, .key    the edge's client certificate (--tls-client-cert/--tls-client-key)
# DIR/attacker.pem,.key a certificate for the attacker's proxy tap, server and client: attacker,
#                       localhost, 127.0.0.1. The edge trusting it is the compromised-proxy model.
# An existing DIR/ca.pem is kept (so certificates already handed out stay valid); delete DIR to
# start over.
set -eu
dir=${1:-certs}
days=${SPLITLAB_CERT_DAYS:-365}
mkdir -p "$dir"
umask 077
cd "$dir"

if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
        -days "$days" -subj "/CN=splitlab test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# name  extendedKeyUsage  subjectAltName
issue() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" \
        -subj "/CN=$1" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
        "$2" "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days "$days" \
        -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

issue cloud serverAuth,clientAuth "DNS:cloud,DNS:localhost,IP:127.0.0.1,IP:::1"
issue edge clientAuth "DNS:edge"
issue attacker serverAuth,clientAuth "DNS:attacker,DNS:localhost,IP:127.0.0.1"
rm -f ca.srl
# the services' keys readable by their user in the containers (uid 10001), which mount this folder read-only
chmod 0644 ./*.pem cloud.key edge.key attacker.key   # ca.key stays private to you
echo "certificates in $dir: ca.pem cloud.pem/.key edge.pem/.key attacker.pem/.key"
