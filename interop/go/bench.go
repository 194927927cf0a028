// The Go half of the "dplock (Go) vs actix-mongo-lock" benchmark (benches/dplock_vs_rust.rs
// runs it and prints the table). Each measure prints one result line the Rust side reads:
//
//	bench --measure uncontended --n 200          ->  UNCONTENDED <B_us> <lock_us> <lock_unlock_us>  (medians)
//	bench --measure takers --takers 2 --n 40     ->  EV G|R <taker> <unix_us> lines, then TAKERS-DONE
//	bench --measure throughput --workers 16 --resources 1 --seconds 5  ->  THROUGHPUT <grants> <seconds>
//
// B is the median round trip of a `ping` through the same connection, measured interleaved with
// the lock samples. Takers take turns on one resource: Acquire, hold --hold-ms, Unlock, then wait
// until another taker holds it (read straight from the collection), so every release is a
// hand-off to a waiter already waiting; two `--takers 1` processes make the cross-process case.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ONSdigital/dp-mongodb/v3/dplock"
	mongoDriver "github.com/ONSdigital/dp-mongodb/v3/mongodb"
	"go.mongodb.org/mongo-driver/bson"
)

func bench(args []string) error {
	flags := flag.NewFlagSet("bench", flag.ExitOnError)
	family := flags.String("family", "", "lock family: collection <family>_locks")
	database := flags.String("database", "actix_mongo_lock_bench", "database")
	measure := flags.String("measure", "", "uncontended, takers or throughput")
	n := flags.Int("n", 200, "samples (uncontended) or grants per taker (takers)")
	takers := flags.Int("takers", 2, "takers in this process")
	name := flags.String("name", "go", "taker name prefix in EV lines")
	holdMs := flags.Int("hold-ms", 20, "how long a taker holds")
	workers := flags.Int("workers", 16, "throughput workers")
	resources := flags.Int("resources", 1, "throughput resources")
	seconds := flags.Float64("seconds", 5, "throughput duration; takers' time limit")
	flags.Parse(args)
	if *family == "" {
		return errors.New("bench needs --family")
	}
	ctx := context.Background()
	conn, err := connect(*database)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	lck := dplock.New(ctx, conn, *family)
	defer lck.Close(ctx)
	out := newOutput(os.Stdout)
	defer out.flush()
	duration := time.Duration(*seconds * float64(time.Second))
	switch *measure {
	case "uncontended":
		return uncontended(ctx, conn, lck, *n, out)
	case "takers":
		return takeTurns(ctx, conn, lck, *family, *name, *takers, *n, *holdMs, duration, out)
	case "throughput":
		return throughput(ctx, lck, *workers, *resources, duration, out)
	}
	return fmt.Errorf("unknown --measure %q", *measure)
}

func median(samples []time.Duration) time.Duration {
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return samples[len(samples)/2]
}

func uncontended(ctx context.Context, conn *mongoDriver.MongoConnection, lck *dplock.Lock, n int, out *output) error {
	var pings, locks, pairs []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := conn.RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}); err != nil {
			return err
		}
		pings = append(pings, time.Since(start))
		start = time.Now()
		lockID, err := lck.Lock(ctx, "u")
		if err != nil {
			return err
		}
		locked := time.Since(start)
		lck.Unlock(ctx, lockID)
		locks = append(locks, locked)
		pairs = append(pairs, time.Since(start))
	}
	out.line("UNCONTENDED %d %d %d", median(pings).Microseconds(), median(locks).Microseconds(), median(pairs).Microseconds())
	return nil
}

func takeTurns(ctx context.Context, conn *mongoDriver.MongoConnection, lck *dplock.Lock, family, name string, takers, n, holdMs int, limit time.Duration, out *output) error {
	collection := conn.Collection(family + "_locks")
	resource := family + "-h"
	deadline := time.Now().Add(limit)
	var wg sync.WaitGroup
	var failure atomic.Value
	for t := 0; t < takers; t++ {
		wg.Add(1)
		go func(taker string) {
			defer wg.Done()
			for grants := 0; grants < n && time.Now().Before(deadline); {
				lockID, err := lck.Acquire(ctx, "h")
				if errors.Is(err, dplock.ErrAcquireMaxRetries) {
					continue
				}
				if err != nil {
					failure.Store(err)
					return
				}
				out.line("EV G %s %d", taker, time.Now().UnixMicro())
				grants++
				time.Sleep(time.Duration(holdMs) * time.Millisecond)
				lck.Unlock(ctx, lockID)
				out.line("EV R %s %d", taker, time.Now().UnixMicro())
				// Wait (at most 5 s) until someone else holds it, so the next Acquire waits.
				other := bson.M{"resource": resource, "exclusive.acquired": true, "exclusive.lockId": bson.M{"$ne": lockID}}
				for wait := time.Now().Add(5 * time.Second); time.Now().Before(wait) && time.Now().Before(deadline); {
					var found bson.M
					if collection.FindOne(ctx, other, &found) == nil {
						break
					}
					time.Sleep(2 * time.Millisecond)
				}
			}
		}(fmt.Sprintf("%s%d", name, t))
	}
	wg.Wait()
	if err, ok := failure.Load().(error); ok {
		return err
	}
	out.line("TAKERS-DONE")
	return nil
}

func throughput(ctx context.Context, lck *dplock.Lock, workers, resources int, duration time.Duration, out *output) error {
	var grants atomic.Int64
	var failure atomic.Value
	start := time.Now()
	deadline := start.Add(duration)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			pick := rand.New(rand.NewSource(seed))
			for time.Now().Before(deadline) {
				lockID, err := lck.Acquire(ctx, fmt.Sprintf("t%d", pick.Intn(resources)))
				if errors.Is(err, dplock.ErrAcquireMaxRetries) {
					continue
				}
				if err != nil {
					failure.Store(err)
					return
				}
				lck.Unlock(ctx, lockID)
				grants.Add(1)
			}
		}(int64(w))
	}
	wg.Wait()
	if err, ok := failure.Load().(error); ok {
		return err
	}
	out.line("THROUGHPUT %d %.3f", grants.Load(), time.Since(start).Seconds())
	return nil
}
