// sarama_check drives a Gregor broker with Shopify's sarama (Debian's 1.22 package, built
// offline against /usr/share/gocode). Each mode prints one line "ok <mode> ..." on success
// and exits non-zero with the reason otherwise. tests/python/test_go_sarama.py runs it.
//
//	sarama_check -brokers HOST:PORT -topic T -mode roundtrip|group|idempotent [-count N]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "sarama_check: "+format+"\n", args...)
	os.Exit(1)
}

func config() *sarama.Config {
	c := sarama.NewConfig()
	// The newest version this sarama knows; every request it sends is at or below Kafka
	// 2.1's versions, which Kafka 4 still accepts (KIP-896).
	c.Version = sarama.V2_1_0_0
	c.ClientID = "sarama-check"
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Return.Errors = true
	c.Metadata.Retry.Max = 20
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	return c
}

// produce sends count values "v0".."v{count-1}" to partition 0 and checks that the offsets
// are consecutive.
func produce(brokers []string, topic string, count int, c *sarama.Config) {
	p, err := sarama.NewSyncProducer(brokers, c)
	if err != nil {
		fail("producer: %v", err)
	}
	defer p.Close()
	var first int64 = -1
	for i := 0; i < count; i++ {
		msg := &sarama.ProducerMessage{
			Topic: topic, Partition: 0,
			Key:   sarama.StringEncoder(fmt.Sprintf("k%d", i)),
			Value: sarama.StringEncoder(fmt.Sprintf("v%d", i)),
		}
		_, off, err := p.SendMessage(msg)
		if err != nil {
			fail("send %d: %v", i, err)
		}
		if first < 0 {
			first = off
		} else if off != first+int64(i) {
			fail("send %d: offset %d, expected %d", i, off, first+int64(i))
		}
	}
}

// readAll reads count records of partition 0 from the beginning and checks their values.
func readAll(brokers []string, topic string, count int) {
	c, err := sarama.NewConsumer(brokers, config())
	if err != nil {
		fail("consumer: %v", err)
	}
	defer c.Close()
	pc, err := c.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		fail("consume partition: %v", err)
	}
	defer pc.Close()
	deadline := time.After(60 * time.Second)
	for i := 0; i < count; i++ {
		select {
		case m := <-pc.Messages():
			if string(m.Value) != fmt.Sprintf("v%d", i) || m.Offset != int64(i) {
				fail("record %d: offset %d value %q", i, m.Offset, m.Value)
			}
		case err := <-pc.Errors():
			fail("consume: %v", err)
		case <-deadline:
			fail("read %d of %d records in 60 s", i, count)
		}
	}
}

type handler struct {
	mu     sync.Mutex
	seen   map[string]bool
	want   int
	done   chan struct{}
	closed bool
}

func (h *handler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *handler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *handler) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		s.MarkMessage(m, "")
		h.mu.Lock()
		h.seen[string(m.Value)] = true
		if len(h.seen) >= h.want && !h.closed {
			h.closed = true
			close(h.done)
		}
		h.mu.Unlock()
	}
	return nil
}

// group consumes the topic with a sarama consumer group (JoinGroup, SyncGroup, Heartbeat,
// Fetch through the group's assignment) and prints the offset committed for it. sarama 1.22
// commits with OffsetCommit v1, which Kafka 4 no longer accepts (KIP-896: v2 is the oldest),
// and neither does Gregor: the commit fails as it would against Kafka 4, so the committed
// offset reads as none (-2, sarama's OffsetOldest).
func group(brokers []string, topic string, count int) int64 {
	c := config()
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	g, err := sarama.NewConsumerGroup(brokers, "sarama-group-"+topic, c)
	if err != nil {
		fail("consumer group: %v", err)
	}
	h := &handler{seen: map[string]bool{}, want: count, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{topic}, h); err != nil && ctx.Err() == nil {
				fail("group consume: %v", err)
			}
		}
	}()
	go func() {
		for err := range g.Errors() {
			// The failed v1 commit shows here; anything else is a failure.
			fmt.Fprintf(os.Stderr, "group error: %v\n", err)
		}
	}()
	select {
	case <-h.done:
	case <-time.After(60 * time.Second):
		fail("group read %d of %d records in 60 s", len(h.seen), count)
	}
	cancel()
	_ = g.Close() // tries to commit the marked offsets (OffsetCommit v1)
	// The committed offset, as the broker answers OffsetFetch.
	client, err := sarama.NewClient(brokers, config())
	if err != nil {
		fail("client: %v", err)
	}
	defer client.Close()
	om, err := sarama.NewOffsetManagerFromClient("sarama-group-"+topic, client)
	if err != nil {
		fail("offset manager: %v", err)
	}
	defer om.Close()
	pom, err := om.ManagePartition(topic, 0)
	if err != nil {
		fail("manage partition: %v", err)
	}
	defer pom.Close()
	next, _ := pom.NextOffset()
	return next
}

func main() {
	brokersFlag := flag.String("brokers", "", "HOST:PORT")
	topic := flag.String("topic", "", "topic (one partition, created by the caller)")
	mode := flag.String("mode", "roundtrip", "roundtrip | group | idempotent")
	count := flag.Int("count", 100, "records")
	flag.Parse()
	brokers := []string{*brokersFlag}
	switch *mode {
	case "roundtrip":
		produce(brokers, *topic, *count, config())
		readAll(brokers, *topic, *count)
	case "group":
		produce(brokers, *topic, *count, config())
		committed := group(brokers, *topic, *count)
		fmt.Printf("ok group %d records committed %d\n", *count, committed)
		return
	case "idempotent":
		c := config()
		c.Producer.Idempotent = true
		c.Net.MaxOpenRequests = 1
		produce(brokers, *topic, *count, c)
		readAll(brokers, *topic, *count)
	default:
		fail("unknown mode %q", *mode)
	}
	fmt.Printf("ok %s %d records\n", *mode, *count)
}
