#!/bin/sh
# Container entry point: make this daemon's CURVE key pair on first start if the key directory (a volume)
# has none, so no two containers share a key baked into the image; then run the command.
# TCPCOPY_KEY names the key pair (tcpcopyd or interceptd, set by the image).
set -e
keys=/etc/tcpcopy/curve
if [ -n "$TCPCOPY_KEY" ] && [ ! -e "$keys/$TCPCOPY_KEY.key_secret" ]; then
    tcpcopyctl keygen --force --dir "$keys" "$TCPCOPY_KEY" >/dev/null     # --force: a public half left alone
    echo "entrypoint: made $keys/$TCPCOPY_KEY.key (give it to the peer)" >&2
fi
[ "$TCPCOPY_KEY" = interceptd ] && mkdir -p "$keys/authorized"
exec "$@"
