//go:build !linux

package gateway

import "net"

// sendQueue: unknown here, so a write must finish each chunk within the
// write timeout (brokerConn).
func sendQueue(net.Conn) (int, bool) { return 0, false }
