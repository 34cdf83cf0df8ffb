using System.Text.Json;
using BlockRepl.Tests.Integration;
using BlockRepl.Tests.Replication.Interop;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace BlockRepl.Tests.Replication;

/// <summary>
/// Interop with another gRPC implementation, @grpc/grpc-js under node (tests/interop): its client against our
/// server stack (Grpc.AspNetCore on Kestrel, as the daemon serves), and our client stack (Grpc.Net.Client, as the
/// daemon's peer link and CLI call) against its server, over h2c on loopback ports chosen at run time.
/// </summary>
public sealed class GrpcInteropTests
{
    private const string InteropError = "négatif: «a» < 0 — 100% refusé ✓";
    private const int ChatCount = 200;
    private static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task NodeClient_AgainstOurServer_UnaryAndBidiSucceed()
    {
        await NodeInterop.EnsureInstalledAsync();
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcService<EchoService>());

        var result = await Tool.RunAsync(
            NodeInterop.Node,
            [Path.Combine(NodeInterop.Directory, "client.js"), server.Address.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), ChatCount.ToString(System.Globalization.CultureInfo.InvariantCulture)],
            HangLimit);
        result.EnsureSuccess();
        var line = result.Stdout.Split('\n').Single(l => l.StartsWith("RESULT ", StringComparison.Ordinal));
        using var json = JsonDocument.Parse(line["RESULT ".Length..]);
        var root = json.RootElement;

        var ok = root.GetProperty("ok");
        Assert.Equal(0, ok.GetProperty("code").GetInt32());
        Assert.Equal(42, ok.GetProperty("reply").GetProperty("sum").GetInt64());
        Assert.Equal("node-client", ok.GetProperty("reply").GetProperty("tag").GetString());
        Assert.Equal("dotnet", ok.GetProperty("reply").GetProperty("server").GetString());

        var refused = root.GetProperty("refused");
        Assert.Equal((int)StatusCode.InvalidArgument, refused.GetProperty("code").GetInt32());
        Assert.Equal(InteropError, refused.GetProperty("details").GetString());

        var stream = root.GetProperty("stream");
        Assert.Equal(0, stream.GetProperty("code").GetInt32());
        var replies = stream.GetProperty("replies").EnumerateArray().ToList();
        Assert.Equal(ChatCount, replies.Count);
        for (var i = 1; i <= ChatCount; i++)
        {
            var reply = replies[i - 1];
            Assert.Equal(i, reply.GetProperty("seq").GetInt64());
            Assert.Equal($"ack msg {i}", reply.GetProperty("text").GetString());
            Assert.Equal(Convert.ToHexStringLower([7, (byte)(i >> 8), (byte)i]), reply.GetProperty("payload").GetString());
        }
    }

    [Fact]
    public async Task OurClient_AgainstNodeServer_UnaryAndBidiSucceed()
    {
        await NodeInterop.EnsureInstalledAsync();
        await using var node = ChildProcess.Start(NodeInterop.Node, [Path.Combine(NodeInterop.Directory, "server.js")]);
        var listening = await node.WaitForLineAsync(l => l.StartsWith("LISTENING ", StringComparison.Ordinal), "node server.js");
        var port = int.Parse(listening["LISTENING ".Length..], System.Globalization.CultureInfo.InvariantCulture);
        using var channel = GrpcChannel.ForAddress(new Uri($"http://127.0.0.1:{port}"));
        var client = new Echo.EchoClient(channel);

        var sum = await client.AddAsync(new AddRequest { A = 2, B = 40, Tag = "dotnet-client" }, deadline: DateTime.UtcNow + HangLimit);
        Assert.Equal(42, sum.Sum);
        Assert.Equal("dotnet-client", sum.Tag);
        Assert.Equal("node", sum.Server);

        var ex = await Assert.ThrowsAsync<RpcException>(async () => await client.AddAsync(new AddRequest { A = -1 }, deadline: DateTime.UtcNow + HangLimit));
        Assert.Equal(StatusCode.InvalidArgument, ex.StatusCode);
        Assert.Equal(InteropError, ex.Status.Detail);

        using var call = client.Chat(deadline: DateTime.UtcNow + HangLimit);
        var writer = Task.Run(async () =>
        {
            for (var i = 1; i <= ChatCount; i++)
            {
                await call.RequestStream.WriteAsync(Message(i));
            }

            await call.RequestStream.CompleteAsync();
        });

        var received = 0;
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
        {
            received++;
            Assert.Equal(Reply(Message(received)), call.ResponseStream.Current);
        }

        await writer;
        Assert.Equal(ChatCount, received);
        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
    }

    private static ChatMessage Message(int i) => new()
    {
        Seq = (ulong)i,
        Text = $"msg {i}",
        Payload = ByteString.CopyFrom((byte)i, (byte)(i >> 8), 7),
    };

    /// <summary>What both servers answer: same seq, "ack " + text, payload reversed.</summary>
    private static ChatMessage Reply(ChatMessage message)
    {
        var payload = message.Payload.ToByteArray();
        Array.Reverse(payload);
        return new ChatMessage { Seq = message.Seq, Text = "ack " + message.Text, Payload = ByteString.CopyFrom(payload) };
    }

    /// <summary>The Echo service as interop.proto describes it, on the daemon's server stack.</summary>
    private sealed class EchoService : Echo.EchoBase
    {
        public override Task<AddReply> Add(AddRequest request, ServerCallContext context) => request.A < 0
            ? throw new RpcException(new Status(StatusCode.InvalidArgument, InteropError))
            : Task.FromResult(new AddReply { Sum = request.A + request.B, Tag = request.Tag, Server = "dotnet" });

        public override async Task Chat(IAsyncStreamReader<ChatMessage> requestStream, IServerStreamWriter<ChatMessage> responseStream, ServerCallContext context)
        {
            while (await requestStream.MoveNext(context.CancellationToken))
            {
                await responseStream.WriteAsync(Reply(requestStream.Current));
            }
        }
    }
}
