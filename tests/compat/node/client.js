// Segmind's documented Node example for IC-Light (axios + form-data), unchanged but for
// the URL and the key, which come from the command line here.
const axios = require('axios');
const FormData = require('form-data');
const fs = require('fs');

const [url, api_key, imagePath, outPath] = process.argv.slice(2);

const formData = new FormData();
formData.append('prompt', 'sunlight from window, wooden table');
formData.append('subject_image', fs.createReadStream(imagePath));
formData.append('cfg', 2);
formData.append('seed', 42);
formData.append('steps', 25);
formData.append('width', 512);
formData.append('height', 640);
formData.append('light_source', 'Left Light');
formData.append('highres_scale', 1.5);
formData.append('output_format', 'png');
formData.append('lowres_denoise', 0.9);
formData.append('output_quality', 80);
formData.append('appended_prompt', 'best quality');
formData.append('highres_denoise', 0.5);
formData.append('negative_prompt', 'lowres, bad anatomy, bad hands, cropped, worst quality');
formData.append('number_of_images', 1);

(async function () {
  try {
    const response = await axios.post(url, formData, {
      headers: { 'x-api-key': api_key, ...formData.getHeaders() },
      responseType: 'arraybuffer',
    });
    fs.writeFileSync(outPath, response.data);
    console.log(JSON.stringify({
      status: response.status,
      contentType: response.headers['content-type'],
      remainingCredits: response.headers['x-remaining-credits'],
      bytes: response.data.length,
    }));
  } catch (error) {
    const status = error.response ? error.response.status : null;
    const body = error.response ? Buffer.from(error.response.data).toString() : String(error);
    console.log(JSON.stringify({ status, body }));
    process.exit(1);
  }
})();
