package protocol

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nbdlab/nbdlab/conform/report"
	"github.com/nbdlab/nbdlab/nbd"
)

// handshakeChecks are the checks of the option haggling, before any export is chosen.
func handshakeChecks() []check {
	return []check{
		{"handshake/greeting", report.Must, "the server greets with NBDMAGIC, IHAVEOPT and NBD_FLAG_FIXED_NEWSTYLE", func(ctx context.Context, p *probe) (report.Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			c.Close()
			if oc.Flags&nbd.FlagFixedNewstyle == 0 {
				return report.Fail, "no NBD_FLAG_FIXED_NEWSTYLE"
			}
			return report.Pass, ""
		}},
		{"handshake/unknown-option", report.Must, "an unknown option gets NBD_REP_ERR_UNSUP and the haggling goes on", func(ctx context.Context, p *probe) (report.Status, string) {
			return expectReply(ctx, p, nbd.Option(0x4242), []byte("?"), nbd.RepErrUnsup)
		}},
		{"handshake/reply-echoes-option", report.Must, "every option reply names the option it answers", func(ctx context.Context, p *probe) (report.Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			for _, opt := range []nbd.Option{nbd.OptList, nbd.OptStructuredReply, nbd.Option(99)} {
				if _, err := oc.Option(opt, nil); err != nil && optionErr(err) == 0 {
					return report.Fail, err.Error()
				}
			}
			return report.Pass, ""
		}},
		{"handshake/list", report.Should, "NBD_OPT_LIST lists exports (NBD_REP_SERVER) and ends with an ACK, or is refused by policy", func(ctx context.Context, p *probe) (report.Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			rs, err := oc.Option(nbd.OptList, nil)
			if optionErr(err) == nbd.RepErrPolicy || optionErr(err) == nbd.RepErrUnsup {
				return report.NA, "listing refused by policy"
			}
			if err != nil {
				return report.Fail, err.Error()
			}
			for _, r := range rs {
				if r.Type != nbd.RepServer || len(r.Data) < 4 || int(binary.BigEndian.Uint32(r.Data)) > len(r.Data)-4 {
					return report.Fail, fmt.Sprintf("malformed reply %v of %d bytes", r.Type, len(r.Data))
				}
			}
			return report.Pass, ""
		}},
		{"handshake/list-with-data", report.Should, "NBD_OPT_LIST with data is NBD_REP_ERR_INVALID", func(ctx context.Context, p *probe) (report.Status, string) {
			return expectReply(ctx, p, nbd.OptList, []byte("junk"), nbd.RepErrInvalid)
		}},
		{"handshake/structured-with-data", report.Should, "NBD_OPT_STRUCTURED_REPLY with data is NBD_REP_ERR_INVALID", func(ctx context.Context, p *probe) (report.Status, string) {
			return expectReply(ctx, p, nbd.OptStructuredReply, []byte("junk"), nbd.RepErrInvalid)
		}},
		{"handshake/info-unknown-export", report.Should, "NBD_OPT_INFO for an export that does not exist is NBD_REP_ERR_UNKNOWN", func(ctx context.Context, p *probe) (report.Status, string) {
			return expectReply(ctx, p, nbd.OptInfo, nameQuery("no-such-export-nbdlab"), nbd.RepErrUnknown)
		}},
		{"handshake/info-malformed", report.Should, "NBD_OPT_INFO whose lengths do not add up is NBD_REP_ERR_INVALID", func(ctx context.Context, p *probe) (report.Status, string) {
			bad := append(str(p.uri.Export), p.uri.Export...)
			bad = append(bad, 0, 5, 0, 1) // five requests, two bytes of them
			return expectReply(ctx, p, nbd.OptInfo, bad, nbd.RepErrInvalid)
		}},
		{"handshake/info-export", report.Must, "NBD_OPT_INFO answers NBD_INFO_EXPORT (size and flags) before its ACK", func(ctx context.Context, p *probe) (report.Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			rs, err := oc.Option(nbd.OptInfo, nameQuery(p.uri.Export))
			if err != nil {
				return report.Fail, err.Error()
			}
			for _, r := range rs {
				if r.Type == nbd.RepInfo && len(r.Data) == 12 && binary.BigEndian.Uint16(r.Data) == uint16(nbd.InfoExport) {
					if nbd.TransmissionFlags(binary.BigEndian.Uint16(r.Data[10:]))&nbd.FlagHasFlags == 0 {
						return report.Fail, "transmission flags lack NBD_FLAG_HAS_FLAGS"
					}
					return report.Pass, ""
				}
			}
			return report.Fail, "no 12-byte NBD_INFO_EXPORT reply"
		}},
		{"handshake/meta-needs-structured", report.Should, "NBD_OPT_SET_META_CONTEXT before structured replies is NBD_REP_ERR_INVALID", func(ctx context.Context, p *probe) (report.Status, string) {
			return expectReply(ctx, p, nbd.OptSetMetaContext, metaQuery(p.uri.Export, nbd.MetaContextBaseAllocation), nbd.RepErrInvalid)
		}},
		{"handshake/list-meta-context", report.Should, "NBD_OPT_LIST_META_CONTEXT offers base:allocation", func(ctx context.Context, p *probe) (report.Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			if _, err := oc.Option(nbd.OptStructuredReply, nil); err != nil {
				return report.NA, "no structured replies"
			}
			rs, err := oc.Option(nbd.OptListMetaContext, metaQuery(p.uri.Export))
			if err != nil {
				return report.Fail, err.Error()
			}
			for _, r := range rs {
				if r.Type == nbd.RepMetaContext && len(r.Data) > 4 && string(r.Data[4:]) == nbd.MetaContextBaseAllocation {
					return report.Pass, ""
				}
			}
			return report.Fail, "base:allocation not listed"
		}},
		{"handshake/abort", report.Must, "NBD_OPT_ABORT is acknowledged (the connection then closes)", func(ctx context.Context, p *probe) (report.Status, string) {
			oc, c, err := p.options(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			defer c.Close()
			if _, err := oc.Option(nbd.OptAbort, nil); err != nil {
				return report.Fail, fmt.Sprintf("no NBD_REP_ACK: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
				return report.Fail, "the connection stayed open 5s after NBD_OPT_ABORT"
			}
			return report.Pass, ""
		}},
		{"handshake/default-export-meta", report.Must, "base:allocation asked for the default export by the empty name, then NBD_OPT_GO with the empty name: NBD_CMD_BLOCK_STATUS works", func(ctx context.Context, p *probe) (report.Status, string) {
			conn, err := p.dial(ctx)
			if err != nil {
				return report.Fail, err.Error()
			}
			cfg := *p.cfg
			cfg.Export = ""
			c, err := nbd.NewClient(ctx, conn, &cfg)
			if got := optionErr(err); got == nbd.RepErrUnknown || got == nbd.RepErrPolicy {
				conn.Close()
				return report.NA, "no default export"
			}
			if err != nil {
				conn.Close()
				return report.Fail, err.Error()
			}
			defer c.Close()
			if !c.Info.Structured {
				return report.NA, "no structured replies"
			}
			if !c.Info.BaseAlloc {
				return report.NA, "base:allocation not offered"
			}
			n := min(c.Info.Size, 1<<20)
			if _, err := c.BlockStatus(ctx, 0, n); err != nil {
				return report.Fail, err.Error()
			}
			return report.Pass, ""
		}},
	}
}
