using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using BlockRepl.Nbd;
using BlockRepl.Tests.Unit;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockRepl.Tests.Robustness;

/// <summary>
/// Seeded, reproducible mutations of real client transcripts thrown at a live server on loopback. The
/// server must answer or close every connection within a deadline, never crash, keep its memory bounded,
/// and still serve a well-behaved client afterwards. A failure names the seed and case to replay.
/// </summary>
public sealed class NbdFuzzTests : IDisposable
{
    private const int Cases = 3000;
    private static readonly TimeSpan CaseDeadline = TimeSpan.FromSeconds(10);

    private readonly TempVolume _vol = new(size: 64 << 20);
    private readonly NbdServer _server;
    private readonly IPEndPoint _endpoint;

    public NbdFuzzTests()
    {
        _server = new NbdServer(_vol.Exports.Values, NullLogger.Instance);
        _server.Listen(new NbdEndpoint(new IPEndPoint(IPAddress.Loopback, 0)));
        _endpoint = (IPEndPoint)_server.BoundEndpoints[0].EndPoint;
    }

    public void Dispose()
    {
        Assert.True(_server.Stop(TimeSpan.FromSeconds(10)), "server did not stop");
        _vol.Dispose();
    }

    /// <summary>Transcripts of what real clients send (qemu, libnbd, the kernel client's simple path).</summary>
    private static byte[][] Seeds() =>
    [
        new NbdScript().ClientFlags().StructuredReply().SetMetaContext("vol", NbdProtocol.BaseAllocation)
            .Go("vol", NbdProtocol.InfoBlockSize)
            .Request(NbdProtocol.CmdWrite, 1, 4096, 512, NbdProtocol.CmdFlagFua, new byte[512])
            .Request(NbdProtocol.CmdRead, 2, 0, 8192)
            .Request(NbdProtocol.CmdBlockStatus, 3, 0, 1 << 20, NbdProtocol.CmdFlagReqOne)
            .Request(NbdProtocol.CmdDisc, 4, 0, 0).ToArray(),
        new NbdScript().ClientFlags(NbdProtocol.ClientFixedNewstyle).Option(NbdProtocol.OptExportName, "vol"u8)
            .Request(NbdProtocol.CmdRead, 1, 0, 4096).Request(NbdProtocol.CmdFlush, 2, 0, 0).ToArray(),
        new NbdScript().ClientFlags().Option(NbdProtocol.OptList, []).Info("vol", NbdProtocol.InfoName, NbdProtocol.InfoDescription)
            .ListMetaContext("vol", "base:").Go("", NbdProtocol.InfoBlockSize)
            .Request(NbdProtocol.CmdWriteZeroes, 1, 0, 65536, NbdProtocol.CmdFlagFastZero)
            .Request(NbdProtocol.CmdTrim, 2, 0, 4096).Request(NbdProtocol.CmdCache, 3, 0, 4096).ToArray(),
        new NbdScript().ClientFlags().StructuredReply().Go("vol")
            .Request(NbdProtocol.CmdWrite, 1, 0, 70000, 0, new byte[70000])
            .Request(NbdProtocol.CmdRead, 2, 1, 70000, NbdProtocol.CmdFlagDf).ToArray(),
    ];

    [Fact]
    public void Server_MutatedTranscripts_NeverCrashesHangsOrGrows()
    {
        const int Seed = 20261122;
        var rng = new Random(Seed);
        var seeds = Seeds();
        var baseline = Process.GetCurrentProcess().WorkingSet64;
        var peak = 0L;
        for (var i = 0; i < Cases; i++)
        {
            var input = Mutate(seeds[rng.Next(seeds.Length)], rng);
            var outcome = RunCase(input, abortive: rng.Next(8) == 0);
            Assert.True(outcome, $"case {i} (seed {Seed}): the server neither answered nor closed within {CaseDeadline.TotalSeconds} s");
            if (i % 250 == 0)
            {
                peak = Math.Max(peak, Process.GetCurrentProcess().WorkingSet64);
            }
        }

        // Connections end; their buffers go back. 32 MiB payloads are the largest thing a case can cause.
        Assert.True(WaitFor(() => _server.ConnectionCount == 0, TimeSpan.FromSeconds(10)), $"{_server.ConnectionCount} connections still open");
        var growth = peak - baseline;
        Assert.True(growth < 512L << 20, $"working set grew by {growth >> 20} MiB during fuzzing");
        AssertServerStillServes();
    }

    [Fact]
    public void Server_ClientsVanishMidRequest_ServerKeepsServing()
    {
        var header = new NbdScript().ClientFlags().StructuredReply().Go("vol").ToArray();
        for (var i = 0; i < 200; i++)
        {
            using var socket = Connect();
            socket.Send(header);
            var request = new byte[NbdProtocol.RequestHeaderSize];
            new NbdRequestHeader(0, NbdProtocol.CmdWrite, (ulong)i, (ulong)(i * 4096), 1 << 20).WriteTo(request);
            socket.Send(request);
            socket.Send(new byte[i * 37]); // part of the payload, then gone
            socket.LingerState = new LingerOption(true, 0); // RST, not FIN
        }

        Assert.True(WaitFor(() => _server.ConnectionCount == 0, TimeSpan.FromSeconds(10)), $"{_server.ConnectionCount} connections still open");
        AssertServerStillServes();
    }

    private bool RunCase(byte[] input, bool abortive)
    {
        using var socket = Connect();
        socket.ReceiveTimeout = (int)CaseDeadline.TotalMilliseconds;
        try
        {
            socket.Send(input);
            if (abortive)
            {
                socket.LingerState = new LingerOption(true, 0);
                return true;
            }

            socket.Shutdown(SocketShutdown.Send);
            var sink = new byte[64 * 1024];
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < CaseDeadline)
            {
                if (socket.Receive(sink) == 0)
                {
                    return true; // the server closed: the case ended
                }
            }

            return false;
        }
        catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted)
        {
            return true; // the server dropped us: also an ending
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.TimedOut)
        {
            return false;
        }
    }

    private static byte[] Mutate(byte[] seed, Random rng)
    {
        var data = new List<byte>(seed);
        var mutations = 1 + rng.Next(4);
        for (var m = 0; m < mutations && data.Count > 0; m++)
        {
            var at = rng.Next(data.Count);
            switch (rng.Next(7))
            {
                case 0: // flip bits
                    data[at] ^= (byte)(1 << rng.Next(8));
                    break;
                case 1: // random byte
                    data[at] = (byte)rng.Next(256);
                    break;
                case 2: // truncate
                    data.RemoveRange(at, data.Count - at);
                    break;
                case 3: // insert junk
                    var junk = new byte[1 + rng.Next(64)];
                    rng.NextBytes(junk);
                    data.InsertRange(at, junk);
                    break;
                case 4: // an extreme 32-bit field (lengths, counts)
                    if (at + 4 <= data.Count)
                    {
                        var v = new[] { 0u, 1u, 0x7fffffffu, 0xffffffffu, (32u << 20) + 1, 4096u, 65536u }[rng.Next(7)];
                        var b = new byte[4];
                        BinaryPrimitives.WriteUInt32BigEndian(b, v);
                        for (var k = 0; k < 4; k++)
                        {
                            data[at + k] = b[k];
                        }
                    }

                    break;
                case 5: // duplicate a run (repeated options or requests)
                    var len = Math.Min(data.Count - at, 1 + rng.Next(64));
                    data.InsertRange(at, data.GetRange(at, len));
                    break;
                default: // delete a run
                    data.RemoveRange(at, Math.Min(data.Count - at, 1 + rng.Next(16)));
                    break;
            }
        }

        return [.. data];
    }

    private Socket Connect()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Connect(_endpoint);
        return socket;
    }

    private void AssertServerStillServes()
    {
        var payload = new byte[4096];
        new Random(7).NextBytes(payload);
        var input = new NbdScript().ClientFlags().Go("vol")
            .Request(NbdProtocol.CmdWrite, 1, 8192, 4096, payload: payload)
            .Request(NbdProtocol.CmdRead, 2, 8192, 4096)
            .Request(NbdProtocol.CmdDisc, 3, 0, 0).ToArray();
        using var socket = Connect();
        socket.ReceiveTimeout = 10_000;
        socket.Send(input);
        var received = new MemoryStream();
        var buffer = new byte[65536];
        int n;
        while ((n = socket.Receive(buffer)) > 0)
        {
            received.Write(buffer, 0, n);
        }

        var r = new NbdReplyReader(received.ToArray());
        r.ExpectGreeting();
        r.OptionReplies(NbdProtocol.OptGo);
        Assert.Equal((0u, 1UL), r.SimpleReply());
        Assert.Equal((0u, 2UL), r.SimpleReply());
        Assert.Equal(payload, r.Bytes(4096));
    }

    private static bool WaitFor(Func<bool> condition, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed > timeout)
            {
                return false;
            }

            Thread.Sleep(20);
        }

        return true;
    }
}
