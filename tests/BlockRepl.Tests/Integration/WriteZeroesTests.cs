using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// NBD_CMD_WRITE_ZEROES with its flags, checked through the data, the image file's allocation and
/// base:allocation. Without NO_HOLE the server may punch a hole; with NO_HOLE it MUST NOT (proto.md), so the
/// image keeps its blocks. (Block status cannot show that on ext4: zero-range leaves unwritten extents, which
/// SEEK_DATA reports as a hole; qemu-nbd reports the same.) FAST_ZERO on ext4 must succeed.
/// </summary>
public sealed class WriteZeroesTests
{
    private const string Script =
        """
        import json, os, sys, nbd
        image = sys.argv[2]
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(sys.argv[1])
        MiB = 1 << 20
        res = {}
        def extents(off, n):
            out = []
            def cb(ctx, start, entries, err):
                if ctx == nbd.CONTEXT_BASE_ALLOCATION:
                    for i in range(0, len(entries), 2):
                        out.append([entries[i], entries[i + 1]])
                return 0
            pos = off
            while pos < off + n:
                before = len(out)
                h.block_status(off + n - pos, pos, cb)
                step = sum(e[0] for e in out[before:])
                if step == 0:
                    break
                pos += step
            return out
        cases = {"plain": (2 * MiB, 0), "noHole": (4 * MiB, nbd.CMD_FLAG_NO_HOLE),
                 "fast": (6 * MiB, nbd.CMD_FLAG_FAST_ZERO), "unaligned": (8 * MiB + 1000, 0)}
        for name, (off, flags) in cases.items():
            n = 1 * MiB if name != "unaligned" else 70000
            h.pwrite(b"\xee" * (n + 2), off - 1)
            h.flush()
            blocks_before = os.stat(image).st_blocks
            try:
                h.zero(n, off, flags)
                err = None
            except nbd.Error as e:
                err = e.errnum
            h.flush()
            data = h.pread(n + 2, off - 1)
            res[name] = {"error": err,
                         "blocksBefore": blocks_before, "blocksAfter": os.stat(image).st_blocks,
                         "zeroed": data[1:-1] == bytes(n),
                         "edgesKept": data[0] == 0xee and data[-1] == 0xee,
                         "extents": extents(off, n) if name != "unaligned" else []}
        print(json.dumps(res))
        """;

    [Fact]
    public async Task WriteZeroes_EachFlagCombination_ZeroesExactlyTheRange()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var result = await NbdPython.RunJsonAsync(Script, daemon.NbdUri, daemon.ImagePath);

        foreach (var name in new[] { "plain", "noHole", "fast", "unaligned" })
        {
            var c = result.GetProperty(name);
            Assert.True(c.GetProperty("error").ValueKind == System.Text.Json.JsonValueKind.Null, $"{name}: write_zeroes failed: {c}");
            Assert.True(c.GetProperty("zeroed").GetBoolean(), $"{name}: range does not read as zeroes: {c}");
            Assert.True(c.GetProperty("edgesKept").GetBoolean(), $"{name}: bytes next to the range were changed: {c}");
        }

        // NO_HOLE: the write-zeroes must not deallocate the range in the image (st_blocks must not drop).
        var noHole = result.GetProperty("noHole");
        Assert.True(
            noHole.GetProperty("blocksAfter").GetInt64() >= noHole.GetProperty("blocksBefore").GetInt64(),
            $"WRITE_ZEROES with NO_HOLE deallocated blocks of the image: {noHole}");

        // The answers tile the range exactly: proto.md says the descriptors' lengths MUST NOT add up to more
        // than the request, and the client asked again from where each answer ended.
        foreach (var name in new[] { "plain", "noHole", "fast" })
        {
            var total = result.GetProperty(name).GetProperty("extents").EnumerateArray().Sum(e => e[0].GetInt64());
            Assert.True(total == TestData.MiB, $"{name}: block status covered {total} of {TestData.MiB} bytes");
        }

        // The image file agrees.
        TestData.AssertAllZero(TestData.ReadFileRange(daemon.ImagePath, 4 * TestData.MiB, TestData.MiB), "NO_HOLE range in the image", 4 * TestData.MiB);

        await daemon.StopAsync();
    }
}
