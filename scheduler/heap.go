package scheduler

// lessHeap is a binary min-heap under less, with container/heap's algorithm (so
// that the order of pops is the same, ties included), without its boxing:
// shed's heap of member indexes. (The queue index's deadline and hard-stop
// queues, whose keys are unique, are keyQueues: keyqueue.go.)
type lessHeap[T any] struct {
	h    []T
	less func(a, b T) bool
}

func (h *lessHeap[T]) len() int { return len(h.h) }
func (h *lessHeap[T]) top() T   { return h.h[0] }

func (h *lessHeap[T]) push(x T) {
	h.h = append(h.h, x)
	for j := len(h.h) - 1; j > 0; {
		i := (j - 1) / 2
		if !h.less(h.h[j], h.h[i]) {
			break
		}
		h.h[i], h.h[j] = h.h[j], h.h[i]
		j = i
	}
}

// pop removes and returns the least element; the vacated slot is zeroed (so
// that a heap of pointers does not keep them alive).
func (h *lessHeap[T]) pop() T {
	n := len(h.h) - 1
	x := h.h[0]
	h.h[0] = h.h[n]
	var zero T
	h.h[n] = zero
	h.h = h.h[:n]
	for i := 0; ; {
		l := 2*i + 1
		if l >= n {
			break
		}
		j := l
		if r := l + 1; r < n && h.less(h.h[r], h.h[l]) {
			j = r
		}
		if !h.less(h.h[j], h.h[i]) {
			break
		}
		h.h[i], h.h[j] = h.h[j], h.h[i]
		i = j
	}
	return x
}
