using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using BlockRepl.Replication.Grpc;
using BlockRepl.Replication.V1;
using V1 = BlockRepl.Replication.V1;
using Google.Protobuf;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication;

/// <summary>Our gRPC client against our gRPC server, in process over loopback h2c.</summary>
public sealed class GrpcLoopbackTests(ITestOutputHelper output)
{
    private const string StatusPath = "/blockrepl.v1.Admin/Status";
    private const string ReplicatePath = "/blockrepl.v1.Replication/Replicate";
    private const string EchoFramePath = "/test.v1.Test/EchoFrame";
    private static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Unary_Request_ReturnsHandlerReply()
    {
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcUnary<StatusRequest, StatusReply>(
            StatusPath,
            (request, _) => Task.FromResult(new StatusReply
            {
                DaemonVersion = "test",
                Volumes = { new V1.VolumeStatus { Name = request.Volume, SizeBytes = 1 << 30, Role = V1.VolumeRole.Primary } },
            })));

        var reply = await server.Channel.CallUnaryAsync<StatusRequest, StatusReply>(StatusPath, new StatusRequest { Volume = "vol0" });

        Assert.Equal("test", reply.DaemonVersion);
        var volume = Assert.Single(reply.Volumes);
        Assert.Equal("vol0", volume.Name);
        Assert.Equal(1UL << 30, volume.SizeBytes);
        Assert.Equal(V1.VolumeRole.Primary, volume.Role);
    }

    [Fact]
    public async Task Duplex_ThousandMessagesBothWays_ArriveInOrder()
    {
        const int count = 1000;
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcDuplex<ReplicationFrame, ReplicationAck>(
            ReplicatePath,
            async (requests, responses, context) =>
            {
                while (await requests.MoveNext(context.CancellationToken))
                {
                    var seq = requests.Current.Batch.FirstSeq;
                    await responses.WriteAsync(new ReplicationAck { ReceivedSeq = seq, AppliedSeq = seq, DurableSeq = seq - 1 });
                }
            }));
        var payload = ByteString.CopyFrom(new byte[4096]);

        var stopwatch = Stopwatch.StartNew();
        using var call = server.Channel.CallDuplex<ReplicationFrame, ReplicationAck>(ReplicatePath, CallOptions.WithTimeout(HangLimit));
        var writer = Task.Run(async () =>
        {
            for (var seq = 1UL; seq <= count; seq++)
            {
                await call.RequestStream.WriteAsync(new ReplicationFrame
                {
                    Batch = new Batch { FirstSeq = seq, RecordCount = 1, UncompressedLength = 4096, CompressedRecords = payload },
                });
            }

            await call.RequestStream.CompleteAsync();
        });

        var expected = 1UL;
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
        {
            var ack = call.ResponseStream.Current;
            Assert.Equal(expected, ack.ReceivedSeq);
            Assert.Equal(expected - 1, ack.DurableSeq);
            expected++;
        }

        await writer;
        stopwatch.Stop();
        Assert.Equal(count + 1UL, expected);
        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
        output.WriteLine($"{count} x 4 KiB frames + acks in {stopwatch.Elapsed.TotalMilliseconds:F0} ms: {count / stopwatch.Elapsed.TotalSeconds:F0} msgs/s each way");
    }

    [Fact]
    public async Task Unary_ClientDeadlinePasses_FailsWithDeadlineExceeded()
    {
        var serverSaw = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await LoopbackGrpcServer.StartAsync(e =>
        {
            e.MapGrpcUnary<ReplicationFrame, ReplicationAck>(EchoFramePath, (_, _) => Task.FromResult(new ReplicationAck()));
            e.MapGrpcUnary<StatusRequest, StatusReply>(
                StatusPath,
                async (_, context) =>
                {
                    try
                    {
                        await Task.Delay(Timeout.Infinite, context.CancellationToken);
                    }
                    finally
                    {
                        serverSaw.TrySetResult(context.CancellationToken.IsCancellationRequested);
                    }

                    return new StatusReply();
                });
        });

        // Warm up the connection first, so the short deadline measures the call and not a cold start.
        await server.Channel.CallUnaryAsync<ReplicationFrame, ReplicationAck>(EchoFramePath, new ReplicationFrame(), CallOptions.WithTimeout(HangLimit));
        var stopwatch = Stopwatch.StartNew();
        var ex = await Assert.ThrowsAsync<RpcException>(() => server.Channel.CallUnaryAsync<StatusRequest, StatusReply>(
            StatusPath, new StatusRequest(), CallOptions.WithTimeout(TimeSpan.FromMilliseconds(300))));

        Assert.Equal(StatusCode.DeadlineExceeded, ex.StatusCode);
        Assert.InRange(stopwatch.Elapsed, TimeSpan.FromMilliseconds(250), HangLimit);
        Assert.True(await serverSaw.Task.WaitAsync(HangLimit), "the server handler's token did not fire");
    }

    [Fact]
    public async Task Server_GrpcTimeoutHeader_EndsCallWithDeadlineExceeded()
    {
        var deadlineSeen = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcUnary<StatusRequest, StatusReply>(
            StatusPath,
            async (_, context) =>
            {
                try
                {
                    await Task.Delay(Timeout.Infinite, context.CancellationToken);
                }
                finally
                {
                    deadlineSeen.TrySetResult(context.DeadlineExceeded);
                }

                return new StatusReply();
            }));

        // A raw request: the server alone enforces the 200 ms timeout (no client-side timer runs).
        using var http = RawHttp2Client();
        using var request = RawRequest(server.Address, StatusPath, Frame(new StatusRequest()));
        request.Headers.TryAddWithoutValidation("grpc-timeout", "200m");
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).WaitAsync(HangLimit);

        Assert.True(await deadlineSeen.Task.WaitAsync(HangLimit));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("4", HeaderOrTrailer(response, "grpc-status"));
    }

    [Fact]
    public async Task Unary_ClientCancels_ServerSeesRequestAborted()
    {
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var aborted = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcUnary<StatusRequest, StatusReply>(
            StatusPath,
            async (_, context) =>
            {
                started.TrySetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, context.CancellationToken);
                }
                finally
                {
                    aborted.TrySetResult(context.GetHttpContext().RequestAborted.IsCancellationRequested && !context.DeadlineExceeded);
                }

                return new StatusReply();
            }));

        using var cts = new CancellationTokenSource();
        var call = server.Channel.CallUnaryAsync<StatusRequest, StatusReply>(StatusPath, new StatusRequest(), new CallOptions(CancellationToken: cts.Token));
        await started.Task.WaitAsync(HangLimit);
        await cts.CancelAsync();

        var ex = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(HangLimit));
        Assert.Equal(StatusCode.Cancelled, ex.StatusCode);
        Assert.True(await aborted.Task.WaitAsync(HangLimit), "the server did not see RequestAborted");
    }

    [Fact]
    public async Task Duplex_ClientDisposesCall_ServerSeesRequestAborted()
    {
        var aborted = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcDuplex<ReplicationFrame, ReplicationAck>(
            ReplicatePath,
            async (requests, responses, context) =>
            {
                try
                {
                    while (await requests.MoveNext(context.CancellationToken))
                    {
                        await responses.WriteAsync(new ReplicationAck { ReceivedSeq = requests.Current.Batch.FirstSeq });
                    }
                }
                finally
                {
                    aborted.TrySetResult(context.GetHttpContext().RequestAborted.IsCancellationRequested);
                }
            }));

        var call = server.Channel.CallDuplex<ReplicationFrame, ReplicationAck>(ReplicatePath);
        await call.RequestStream.WriteAsync(new ReplicationFrame { Batch = new Batch { FirstSeq = 7 } });
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(7UL, call.ResponseStream.Current.ReceivedSeq);
        call.Dispose();

        Assert.True(await aborted.Task.WaitAsync(HangLimit), "the server did not see RequestAborted");
        Assert.Equal(StatusCode.Cancelled, call.GetStatus().StatusCode);
    }

    [Fact]
    public async Task Server_LengthPrefixOverLimit_RejectedBeforeBodyArrives()
    {
        var handlerRan = false;
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcUnary<StatusRequest, StatusReply>(
            StatusPath,
            (_, _) =>
            {
                handlerRan = true;
                return Task.FromResult(new StatusReply());
            }));

        // Only the 5-byte prefix (claiming 64 MiB) is sent and the body stays open: the answer can only come
        // from the prefix, since the server never gets the message.
        var prefix = new byte[5];
        BinaryPrimitives.WriteUInt32BigEndian(prefix.AsSpan(1), 64 * 1024 * 1024);
        var content = new StalledContent(prefix);
        using var http = RawHttp2Client();
        using var request = RawRequest(server.Address, StatusPath, content);
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).WaitAsync(HangLimit);
        content.Release();

        Assert.Equal("8", HeaderOrTrailer(response, "grpc-status"));
        Assert.Contains("maximum configured message size", Uri.UnescapeDataString(HeaderOrTrailer(response, "grpc-message") ?? ""));
        Assert.False(handlerRan);
    }

    [Fact]
    public async Task Unary_RequestOverConfiguredLimit_FailsWithResourceExhausted()
    {
        await using var server = await LoopbackGrpcServer.StartAsync(
            e => e.MapGrpcUnary<ReplicationFrame, ReplicationAck>(EchoFramePath, (_, _) => Task.FromResult(new ReplicationAck())),
            options => options.MaxReceiveMessageSize = 16 * 1024);

        var frame = new ReplicationFrame { Batch = new Batch { CompressedRecords = ByteString.CopyFrom(new byte[64 * 1024]) } };
        var ex = await Assert.ThrowsAsync<RpcException>(() =>
            server.Channel.CallUnaryAsync<ReplicationFrame, ReplicationAck>(EchoFramePath, frame, CallOptions.WithTimeout(HangLimit)));

        Assert.Equal(StatusCode.ResourceExhausted, ex.StatusCode);
    }

    [Fact]
    public async Task Unary_ResponseOverClientLimit_FailsWithResourceExhausted()
    {
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcUnary<ReplicationFrame, ReplicationFrame>(
            EchoFramePath, (request, _) => Task.FromResult(request)));
        using var channel = GrpcChannel.ForAddress(server.Address, new GrpcChannelOptions { MaxReceiveMessageSize = 1024 });

        var frame = new ReplicationFrame { Batch = new Batch { CompressedRecords = ByteString.CopyFrom(new byte[8 * 1024]) } };
        var ex = await Assert.ThrowsAsync<RpcException>(() =>
            channel.CallUnaryAsync<ReplicationFrame, ReplicationFrame>(EchoFramePath, frame, CallOptions.WithTimeout(HangLimit)));

        Assert.Equal(StatusCode.ResourceExhausted, ex.StatusCode);
    }

    [Fact]
    public async Task Unary_ThreeMebibyteMessage_RoundTripsUnderDefaultLimit()
    {
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcUnary<ReplicationFrame, ReplicationFrame>(
            EchoFramePath, (request, _) => Task.FromResult(request)));
        var data = new byte[3 * 1024 * 1024];
        new Random(7).NextBytes(data);
        var frame = new ReplicationFrame { Batch = new Batch { FirstSeq = 9, CompressedRecords = ByteString.CopyFrom(data) } };

        var echoed = await server.Channel.CallUnaryAsync<ReplicationFrame, ReplicationFrame>(EchoFramePath, frame, CallOptions.WithTimeout(HangLimit));

        Assert.Equal(frame, echoed);
    }

    [Fact]
    public async Task Unary_HandlerThrowsRpcException_StatusAndNonAsciiMessageRoundTrip()
    {
        const string detail = "volume «données» 日本: 100% refusé\t✓";
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcUnary<PromoteRequest, PromoteReply>(
            "/blockrepl.v1.Admin/Promote",
            (_, _) => throw new RpcException(StatusCode.FailedPrecondition, detail)));

        var ex = await Assert.ThrowsAsync<RpcException>(() =>
            server.Channel.CallUnaryAsync<PromoteRequest, PromoteReply>("/blockrepl.v1.Admin/Promote", new PromoteRequest { Volume = "v" }));

        Assert.Equal(StatusCode.FailedPrecondition, ex.StatusCode);
        Assert.Equal(detail, ex.Status.Detail);
    }

    [Fact]
    public async Task Duplex_HandlerFailsAfterReplies_StatusArrivesInTrailers()
    {
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcDuplex<ReplicationFrame, ReplicationAck>(
            ReplicatePath,
            async (requests, responses, context) =>
            {
                Assert.True(await requests.MoveNext(context.CancellationToken));
                await responses.WriteAsync(new ReplicationAck { ReceivedSeq = 1 });
                throw new RpcException(StatusCode.DataLoss, "crc32c mismatch in batch 2 — données perdues");
            }));

        using var call = server.Channel.CallDuplex<ReplicationFrame, ReplicationAck>(ReplicatePath, CallOptions.WithTimeout(HangLimit));
        await call.RequestStream.WriteAsync(new ReplicationFrame { Batch = new Batch { FirstSeq = 1 } });
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));

        var ex = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.DataLoss, ex.StatusCode);
        Assert.Equal("crc32c mismatch in batch 2 — données perdues", ex.Status.Detail);
        Assert.Equal(StatusCode.DataLoss, call.GetStatus().StatusCode);
        Assert.Equal("15", call.GetTrailers()["grpc-status"]);
    }

    [Fact]
    public async Task Server_CompressedFlag_FailsWithUnimplemented()
    {
        await using var server = await LoopbackGrpcServer.StartAsync(e => e.MapGrpcUnary<StatusRequest, StatusReply>(
            StatusPath, (_, _) => Task.FromResult(new StatusReply())));
        var body = Frame(new StatusRequest { Volume = "x" });
        body[0] = 1;

        using var http = RawHttp2Client();
        using var request = RawRequest(server.Address, StatusPath, body);
        using var response = await http.SendAsync(request).WaitAsync(HangLimit);

        Assert.Equal("12", HeaderOrTrailer(response, "grpc-status"));
    }

    [Fact]
    public async Task Client_NoServerListening_FailsWithUnavailable()
    {
        await using var server = await LoopbackGrpcServer.StartAsync(_ => { });
        var address = server.Address;
        await server.DisposeAsync();
        using var channel = GrpcChannel.ForAddress(address);

        var ex = await Assert.ThrowsAsync<RpcException>(() =>
            channel.CallUnaryAsync<StatusRequest, StatusReply>(StatusPath, new StatusRequest(), CallOptions.WithTimeout(HangLimit)));

        Assert.Equal(StatusCode.Unavailable, ex.StatusCode);
    }

    private static byte[] Frame<T>(T message)
        where T : IMessage
    {
        var size = message.CalculateSize();
        var bytes = new byte[5 + size];
        GrpcFraming.WriteMessage(bytes, message, size);
        return bytes;
    }

    private static HttpClient RawHttp2Client() => new(new SocketsHttpHandler()) { Timeout = HangLimit };

    private static HttpRequestMessage RawRequest(Uri address, string path, byte[] body) =>
        RawRequest(address, path, new ByteArrayContent(body));

    private static HttpRequestMessage RawRequest(Uri address, string path, HttpContent content)
    {
        content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(address, path))
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = content,
        };
        request.Headers.TryAddWithoutValidation("te", "trailers");
        return request;
    }

    private static string? HeaderOrTrailer(HttpResponseMessage response, string name) =>
        response.Headers.TryGetValues(name, out var values) || response.TrailingHeaders.TryGetValues(name, out values)
            ? values.First()
            : null;

    /// <summary>A request body that sends some bytes and then stays open until released.</summary>
    private sealed class StalledContent(byte[] first) : HttpContent
    {
        private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Release() => _release.TrySetResult();

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            await stream.WriteAsync(first);
            await stream.FlushAsync();
            await _release.Task.WaitAsync(HangLimit);
        }

        protected override bool TryComputeLength(out long length)
        {
            length = -1;
            return false;
        }
    }
}
