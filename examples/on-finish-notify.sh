#!/bin/sh
# minipipe on_finish hook: one message per ended run to a chat webhook (Slack,
# Mattermost, Rocket.Chat and friends take a form field `text`).
#
#   sudo install -D -m 755 on-finish-notify.sh /usr/local/lib/minipipe/on-finish-notify.sh
#   /etc/minipipe/config.json:
#     "on_finish": ["/usr/local/lib/minipipe/on-finish-notify.sh",
#                   "https://chat.example.org/hooks/XXXX"]
#   sudo systemctl reload minipipe
#
# The daemon runs it as on_finish_user (default nobody), never as root, with the run's
# facts in MINIPIPE_RUN_* and kills it after on_finish_timeout_seconds; a failure is
# logged in `journalctl -u minipipe`. Failed runs bring their last lines of output.
set -eu
url=${1:?usage: on-finish-notify.sh WEBHOOK_URL}
case $MINIPIPE_RUN_STATE in
    SUCCEEDED) mark="ok" ;;
    *) mark="!!" ;;
esac
text="$mark run $MINIPIPE_RUN_ID ($MINIPIPE_RUN_NAME, by $MINIPIPE_RUN_OWNER)"
text="$text $MINIPIPE_RUN_STATE after ${MINIPIPE_RUN_DURATION}s"
if [ -n "$MINIPIPE_RUN_REASON" ]; then
    text="$text: $MINIPIPE_RUN_REASON"
fi
if [ "$MINIPIPE_RUN_STATE" != SUCCEEDED ] && [ -n "$MINIPIPE_RUN_OUTPUT_TAIL" ]; then
    text="$text
$MINIPIPE_RUN_OUTPUT_TAIL"
fi
exec curl -fsS -m 10 -o /dev/null --data-urlencode "text=$text" -- "$url"
