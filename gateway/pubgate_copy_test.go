package gateway

import (
	"bytes"
	"io"
	"sync"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// paho's resume sets the DUP flag on the packet the store's Get returns, while
// the next connection's writer may be writing the stored packet (paho issue
// 703). Get returns a copy, so the flag is set on the copy: under the race
// detector this test fails if Get hands out the stored packet.
func TestPubGateGetCopiesPublishes(t *testing.T) {
	g := newPubGate(8)
	g.Open()
	stored := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	stored.Qos, stored.Retain = 1, true
	stored.TopicName, stored.MessageID, stored.Payload = "sneakgate/res/fashion/d1", 7, []byte(`{"status":"ok"}`)
	g.Put("o.7", stored)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the writer that took the packet from paho's outgoing channel
		defer wg.Done()
		if err := stored.Write(io.Discard); err != nil {
			t.Error(err)
		}
	}()
	var resent *packets.PublishPacket
	go func() { // paho's resume (client.go line 1114)
		defer wg.Done()
		resent = g.Get("o.7").(*packets.PublishPacket)
		resent.Dup = true
	}()
	wg.Wait()

	if stored.Dup {
		t.Error("Get handed out the stored packet: the resend's DUP flag was set on it")
	}
	var want, got bytes.Buffer
	stored.Dup = true
	if err := stored.Write(&want); err != nil {
		t.Fatal(err)
	}
	if err := resent.Write(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Errorf("the copy encodes as %q, the stored packet with DUP as %q", got.Bytes(), want.Bytes())
	}

	sub := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	sub.MessageID = 8
	g.Put("o.8", sub)
	if g.Get("o.8") != packets.ControlPacket(sub) {
		t.Error("Get copied a subscription; only publishes need a copy")
	}
	if g.Get("o.9") != nil {
		t.Error("Get of a key not stored is not nil")
	}
}
