using BenchmarkDotNet.Attributes;
using BlockRepl.Nbd;

namespace BlockRepl.Benchmarks;

/// <summary>The request parser and reply encoders alone.</summary>
[MemoryDiagnoser]
public class NbdCodecBenchmarks
{
    private readonly byte[] _request = new byte[NbdProtocol.RequestHeaderSize];
    private readonly byte[] _reply = new byte[64];

    [GlobalSetup]
    public void Setup() => new NbdRequestHeader(0, NbdProtocol.CmdRead, 1, 4096, 4096).WriteTo(_request);

    [Benchmark]
    public ulong ParseRequestHeader() => NbdRequestHeader.TryRead(_request, out var h) ? h.Offset : 0;

    [Benchmark]
    public int EncodeSimpleReply() => NbdReplyEncoder.SimpleReply(_reply, 0, 42);

    [Benchmark]
    public int EncodeOffsetDataHeader() => NbdReplyEncoder.OffsetDataHeader(_reply, true, 42, 4096, 4096);
}
