using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// CAN_MULTI_CONN promises that a FLUSH on one connection makes every write already answered on any
/// connection visible (and durable) to all of them. Checked with libnbd's Python binding.
/// </summary>
public sealed class MultiConnTests
{
    private const string Script =
        """
        import json, random, sys, nbd
        uri = sys.argv[1]
        hs = []
        for i in range(3):
            h = nbd.NBD()
            h.connect_uri(uri)
            hs.append(h)
        rng = random.Random(5)
        size = hs[0].get_size()
        res = {"multiConn": [h.can_multi_conn() for h in hs], "rounds": 0, "mismatches": []}
        for r in range(24):
            writer, flusher, reader = hs[r % 3], hs[(r + 1) % 3], hs[(r + 2) % 3]
            n = rng.choice([1, 511, 4096, 65537, 1 << 20])
            off = rng.randrange(0, size - n)
            data = rng.randbytes(n)
            writer.pwrite(data, off)
            flusher.flush()
            if reader.pread(n, off) != data:
                res["mismatches"].append({"round": r, "op": "write", "offset": off, "length": n})
            if r % 4 == 3:
                writer.trim(n, off)
                flusher.flush()
                if reader.pread(n, off) != bytes(n):
                    res["mismatches"].append({"round": r, "op": "trim", "offset": off, "length": n})
            res["rounds"] += 1
        for h in hs:
            h.shutdown()
        print(json.dumps(res))
        """;

    [Fact]
    public async Task MultiConn_WriteOnOneFlushOnSecondReadOnThird_SeesTheData()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var result = await NbdPython.RunJsonAsync(Script, daemon.NbdUri);

        Assert.All(result.GetProperty("multiConn").EnumerateArray(), c => Assert.True(c.GetBoolean(), "CAN_MULTI_CONN not advertised"));
        Assert.Equal(24, result.GetProperty("rounds").GetInt32());
        Assert.True(result.GetProperty("mismatches").GetArrayLength() == 0, $"stale reads: {result.GetProperty("mismatches")}");

        await daemon.StopAsync();
    }
}
