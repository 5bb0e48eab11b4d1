#!/bin/sh
# Keep comfort noise (RTP payload type 13) away from WebRTC phones without
# rtpengine's transcoder: an nftables table of its own, in front of rtpengine's
# media ports, drops UDP datagrams that are RTP version 2 with payload type 13
# (marker bit set or not). Nothing else is touched: STUN (first byte 0-3),
# DTLS (20-63), TURN ChannelData (64-79) and ZRTP fail the version test, and
# RTCP (PT 200-204, 0x48-0x4c once the marker bit is masked off) fails the
# payload-type test, rtcp-mux or not. rtpengine/FLAGS.md explains why.
#
#   cn-filter.sh install LOW HIGH [OWNER]   create (or replace) table inet gw_cn_LOW_HIGH
#   cn-filter.sh remove  LOW HIGH           delete it (no error if it is not there)
#   cn-filter.sh show    LOW HIGH [OWNER]   print the ruleset install would load
#   cn-filter.sh status  LOW HIGH           the table with its drop counter; exit 1 if absent
#
# LOW-HIGH is rtpengine's port-min/port-max (GW_MEDIA_PORTS): one table per
# rtpengine, named after its range, so several gateways on a host (or test
# stacks) never touch each other's. OWNER goes into the table's comment
# ("make run pid 1234", "rtpengine container"); `make run` removes tables whose
# owner pid is gone. Needs nftables and CAP_NET_ADMIN (root on the host, or
# cap_add: NET_ADMIN in a container with host networking); a kernel with
# nf_tables (Linux >= 4.x; Debian 12's has it). The chain hooks prerouting at
# priority raw (-300): before conntrack, and before the filter-table INPUT rule
# through which rtpengine's kernel module (xt_RTPENGINE) forwards media.
set -eu

usage() {
  echo "usage: $0 install|remove|show|status LOW HIGH [OWNER]" >&2
  exit 2
}

[ $# -ge 3 ] || usage
cmd=$1 low=$2 high=$3
owner=${4:-cn-filter.sh}
case $low$high in *[!0-9]*) echo "$0: ports must be numbers: $low $high" >&2; exit 2 ;; esac
if [ "$low" -lt 1 ] || [ "$high" -gt 65535 ] || [ "$low" -gt "$high" ]; then
  echo "$0: bad port range $low-$high (1-65535, LOW <= HIGH)" >&2
  exit 2
fi
case $owner in *[!A-Za-z0-9\ ._:-]*) echo "$0: OWNER may only hold letters, digits, space and ._:-" >&2; exit 2 ;; esac
table="gw_cn_${low}_${high}"

ruleset() {
  cat <<EOF
table inet $table {
	comment "comfort noise filter for rtpengine ports $low-$high; owner: $owner"
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		udp dport $low-$high udp length >= 20 @th,64,2 2 @th,73,7 13 counter drop comment "RTP v2, payload type 13 (CN)"
	}
}
EOF
}

case $cmd in
  show)
    ruleset ;;
  install)
    # One transaction: an old table of that name (left by a crash) is replaced
    # atomically, never doubled.
    { echo "add table inet $table"; echo "delete table inet $table"; ruleset; } | nft -f - ;;
  remove)
    if nft list table inet "$table" >/dev/null 2>&1; then
      nft delete table inet "$table"
    fi ;;
  status)
    nft list table inet "$table" ;;
  *)
    usage ;;
esac
