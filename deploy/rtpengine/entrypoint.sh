#!/bin/sh
# The rtpengine container's entrypoint: the comfort-noise filter in front of
# rtpengine's media ports, then rtpengine in the foreground; the filter goes
# again when rtpengine stops.
#
# The filter is rtpengine/cn-filter.sh (compose mounts it at $CN_FILTER): an
# nftables table of its own, inet gw_cn_LOW_HIGH, that drops RTP payload type 13
# (comfort noise) sent to LOW-HIGH = GW_MEDIA_PORTS, so the gateway keeps CN
# from WebRTC phones without rtpengine's transcoder. It needs CAP_NET_ADMIN
# (compose: cap_add NET_ADMIN) and, with host networking, lands in the host's
# ruleset. Without it rtpengine still starts; the gateway notices (make run
# sends PT 13 through rtpengine at start) and falls back to the transcoder.
# rtpengine's own port-min/port-max come from GW_MEDIA_PORTS too, so the
# filter and rtpengine always cover the same range.
set -u
CN_FILTER=${CN_FILTER:-/usr/local/sbin/gw-cn-filter}
RTPENGINE_CONF=${RTPENGINE_CONF:-/etc/rtpengine/rtpengine.conf}
range=${GW_MEDIA_PORTS:-10000-20000}
low=${range%-*}
high=${range#*-}
case $low$high in
  ''|*[!0-9]*) echo "rtpengine-entrypoint: GW_MEDIA_PORTS=$range: expected LOW-HIGH" >&2; exit 2 ;;
esac

installed=0
if [ -x "$CN_FILTER" ] && "$CN_FILTER" install "$low" "$high" "rtpengine container"; then
  installed=1
  echo "rtpengine-entrypoint: comfort noise: nftables table inet gw_cn_${low}_${high} drops RTP PT 13 sent to ports $low-$high"
else
  echo "rtpengine-entrypoint: comfort noise: filter NOT installed (needs nftables, $CN_FILTER and" \
       "CAP_NET_ADMIN); the gateway falls back to rtpengine's transcoder (rtpengine/FLAGS.md)" >&2
fi

rtpengine --config-file="$RTPENGINE_CONF" --foreground --log-stderr \
  --port-min="$low" --port-max="$high" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
# wait returns early when a trapped signal arrives: wait again until rtpengine is gone
while :; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
if [ "$installed" = 1 ]; then
  "$CN_FILTER" remove "$low" "$high" || echo "rtpengine-entrypoint: could not remove table inet gw_cn_${low}_${high}" >&2
fi
exit "$rc"
