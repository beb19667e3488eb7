// Package mqttsub reads the broker's answer to a subscription made through paho,
// for the gateway and `sneakgate tail`: paho reports a refused subscription
// (SUBACK 0x80) only in the token's result, not as an error, and keys a shared
// ($share/{group}/...) or $queue/ subscription's result by the filter without
// that prefix.
package mqttsub

import (
	"errors"
	"fmt"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Failure is the SUBACK return code of a refused subscription (MQTT 3.1.1).
const Failure byte = 0x80

// Code returns the SUBACK return code for filter, the one filter tok (completed
// without error) subscribed to: the granted QoS (0, 1 or 2), or Failure or
// another code above 2 for a refusal (Refused). It is an error when tok is not
// a subscribe token or holds no result for filter.
func Code(tok mqtt.Token, filter string) (byte, error) {
	st, ok := tok.(*mqtt.SubscribeToken)
	if !ok {
		return 0, errors.New("subscribe: unexpected token type")
	}
	res := st.Result()
	code, ok := res[filter]
	if !ok && len(res) == 1 {
		// paho keys a shared subscription's result by the filter without its
		// $share/{group}/ (or $queue/) prefix; one filter was subscribed, so
		// this is its result.
		for _, c := range res {
			code, ok = c, true
		}
	}
	if !ok {
		return 0, fmt.Errorf("SUBACK without a result for %s", filter)
	}
	return code, nil
}

// Refused reports whether a SUBACK return code refuses the subscription.
func Refused(code byte) bool { return code > 2 }
